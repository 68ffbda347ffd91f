"""``hf-egt train``: fine-tune a causal LM with LoRA (or HyperLoRA) and a group objective (``EGTTrainer``), evaluate
it per group before and after, write the adapter, ``split.json``, the report and a model card, and push.

Every ``transformers.TrainingArguments`` option applies (through ``EGTConfig``); it runs unchanged under
``accelerate launch -m hf_egt.apps.cli train ...``. Every check that can fail (options, output folder, checkpoint,
data, model path) runs before the model is loaded (``hf_egt.apps.checks``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_egt.apps import checks
from hf_egt.apps.arguments import add_renamed_options, redacted_command
from hf_egt.apps.reporting import held_out_sentence
from hf_egt.core.resume import GROUP_OBJECTIVE_RECORD_FIELDS, recorded_sampling_exponent, resolved_model_path
from hf_egt.integrations.hyper.config import HYPERNETWORK_FOLDER


@dataclass
class TrainScriptArguments:
    """Options of ``hf-egt train`` besides ``EGTConfig`` (TrainingArguments + ``group_column``, ``groups``,
    ``objective``, ``group_step_size``, ``text_column``, ``max_length``...)."""

    model_name_or_path: str = field(metadata={"help": "Hub id, local folder, or .gguf file of a causal LM."})
    dataset: str = field(
        metadata={
            "help": "bold-<domain> or bible-<language>-... (offline: bold-race, bible-en-fr-es-de, ...), a local "
            "json/jsonl/csv/parquet file, or a Hub dataset id."
        }
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Eval split (default: test/validation if present, else held-out rows)."}
    )
    max_train_per_group: int | None = field(
        default=None, metadata={"help": "At most this many training rows per group (default: all)."}
    )
    max_eval_per_group: int | None = field(
        default=None, metadata={"help": "At most this many eval rows per group (default: all)."}
    )
    eval_fraction: float = field(default=0.2, metadata={"help": "Held-out share per group without an eval split."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt (default: all-linear)."}
    )
    hyper: bool = field(default=False, metadata={"help": "Generate the LoRA factors with a hypernetwork (HyperLoRA)."})
    hyper_context_size: int = field(
        default=64,
        metadata={
            "help": "With --hyper: the first this many training rows are the context set, whose encoding fixes the "
            "context of the exported peft adapter."
        },
    )
    eval_base: bool = field(default=True, metadata={"help": "Evaluate before training too (the base model)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the checkpoints and outputs of an earlier run in --output_dir (refused otherwise)."},
    )
    skip_unusable_groups: bool = field(
        default=False,
        metadata={
            "help": "Leave out, with a warning repeated in the report, card and split.json, rows without group or "
            "text, groups that cannot be split or evaluated, and groups not listed in --groups (default: an error "
            "naming them)."
        },
    )
    resume_allow_changes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "With --resume_from_checkpoint: options whose value may differ from the checkpoint's run (e.g. "
            "dataset, group_step_size, lora_dropout); any other difference is refused before the model loads."
        },
    )
    # The HyperLoRAConfig options (`--ple_weight`, `--hyper_context_dim`...), declared by `train_parser` from the
    # config's own fields and set by `parse_train_arguments`: field name -> value.
    hyper_options: dict = field(default_factory=dict, init=False)


# HyperLoRAConfig fields `hf-egt train --hyper` exposes (as `--ple_*` / `--hyper_<field>`).
TRAIN_HYPER_FIELDS = (
    "ple_weight",
    "ple_every",
    "set_encoder_input",
    "context_dim",
    "set_encoder_hidden",
    "hidden_size",
    "head_rank",
    "match_lora_parameters",
)


def build_peft_config(script_args: TrainScriptArguments, model_name_or_path: str):
    """A ``peft.LoraConfig`` from the LoRA options, or a ``HyperLoRAConfig`` with ``--hyper``."""
    target_modules = script_args.lora_target_modules
    target = target_modules[0] if len(target_modules) == 1 and target_modules[0] == "all-linear" else target_modules
    if script_args.hyper:
        from hf_egt.integrations.hyper import HyperLoRAConfig

        return HyperLoRAConfig(
            r=script_args.lora_r,
            lora_alpha=script_args.lora_alpha,
            target_modules=target,
            lora_dropout=script_args.lora_dropout,
            base_model_name_or_path=model_name_or_path,
            task_type="CAUSAL_LM",
            **script_args.hyper_options,
        )
    from peft import LoraConfig

    return LoraConfig(
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
        target_modules=target,
        task_type="CAUSAL_LM",
    )


# Old option -> its name on every command (docs/trainer.md, "One vocabulary"); the old ones go in REMOVAL_VERSION.
TRAIN_RENAMED_OPTIONS = {"--max_per_group": "--max_train_per_group", "--hyper_context_rows": "--hyper_context_size"}


GROUPS_HELP = (
    "Train and evaluate these groups only (their ids follow this order; default: every group of the data). A group "
    "of the data not listed is an error naming its rows, unless --skip_unusable_groups, which leaves it out with a "
    "warning recorded in the report, card and split.json."
)


def train_parser():
    """``hf-egt train``'s parser: ``TrainScriptArguments`` and ``EGTConfig``, the EGT options first in ``--help``
    (script, then group objective), then the ~700 lines of ``TrainingArguments``."""
    from dataclasses import fields

    from transformers import HfArgumentParser, TrainingArguments

    from hf_egt.apps.arguments import add_config_arguments
    from hf_egt.integrations.trainer import EGTConfig

    parser = HfArgumentParser(
        (TrainScriptArguments, EGTConfig),
        allow_abbrev=False,  # `--hub_tok x` must not silently mean `--hub_token x`
        prog="hf-egt train",
        description="Fine-tune a causal LM with LoRA and a group objective (EGTTrainer); write the per-group report "
        "and a model card; push with --push_to_hub --hub_model_id.",
    )
    script = {f.name for f in fields(TrainScriptArguments)}
    egt = {f.name for f in fields(EGTConfig)} - {f.name for f in fields(TrainingArguments)}
    sections = [
        (parser.add_argument_group("hf-egt train (model, data, LoRA)"), script),
        (parser.add_argument_group("group objective and losses (EGTConfig)"), egt),
    ]
    add_config_arguments(parser.add_argument_group("HyperLoRA (with --hyper)"), TRAIN_HYPER_FIELDS)
    general = parser._optionals
    for group, names in sections:
        moved = [action for action in general._group_actions if action.dest in names]
        general._group_actions[:] = [action for action in general._group_actions if action.dest not in names]
        group._group_actions.extend(moved)
    general.title = "TrainingArguments"
    for action in parser._actions:
        if action.dest == "groups":  # EGTConfig's help describes the trainer API; the command also filters the data
            action.help = GROUPS_HELP
    parser.usage = "hf-egt train --model_name_or_path MODEL --dataset DATA [options below]"
    parser._action_groups.remove(general)
    parser._action_groups.append(general)  # shown after the EGT sections
    add_renamed_options(parser, TRAIN_RENAMED_OPTIONS)
    return parser


def parse_train_arguments(argv: Sequence[str]):
    """``(TrainScriptArguments, EGTConfig)`` from the command line; unknown options are a ``ValueError`` that names
    them without their values (a mistyped secret option must not be echoed)."""
    from hf_egt.integrations.hyper.config import config_values

    parser = train_parser()
    try:
        script_args, training_args, hyper_namespace, unknown = parser.parse_args_into_dataclasses(
            args=list(argv), return_remaining_strings=True
        )
    except ValueError as error:  # a config's own check: name the option, not the field
        options = {action.dest for action in parser._actions}
        raise ValueError(re.sub(r"`(\w+)`", lambda m: f"`--{m[1]}`" if m[1] in options else m[0], str(error))) from None
    if unknown:
        options = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")] or ["<positional values>"]
        raise ValueError(f"unrecognized arguments: {' '.join(options)} (run `hf-egt train --help` for the options).")
    script_args.hyper_options = config_values(hyper_namespace, TRAIN_HYPER_FIELDS)
    return script_args, training_args


def check_train_arguments(script_args: TrainScriptArguments, training_args) -> None:
    """Checks of option values that need no data and no model."""
    if training_args.max_steps == 0 or (training_args.max_steps < 0 and training_args.num_train_epochs <= 0):
        raise ValueError(
            f"`--max_steps` {training_args.max_steps} with `--num_train_epochs` {training_args.num_train_epochs} "
            "trains nothing; pass a positive `--max_steps`, or `--max_steps -1` with a positive `--num_train_epochs`."
        )
    from hf_egt.integrations.hyper.config import HyperLoRAConfig, option_name

    defaults = HyperLoRAConfig()
    for name, value in script_args.hyper_options.items():
        if value != getattr(defaults, name) and not script_args.hyper:
            raise ValueError(
                f"`--{option_name(name)}` {value} is a HyperLoRA option: it needs `--hyper` (or drop "
                f"`--{option_name(name)}`)."
            )
    if script_args.hyper:
        try:
            HyperLoRAConfig(**script_args.hyper_options)
        except ValueError as error:  # name the option, not the field
            message = str(error)
            for name in script_args.hyper_options:
                message = message.replace(f"`{name}`", f"`--{option_name(name)}`")
            raise ValueError(message) from None
    if script_args.lora_r < 1:
        raise ValueError(f"`--lora_r` must be a positive integer (the LoRA rank), got {script_args.lora_r}.")
    if script_args.lora_alpha <= 0:
        raise ValueError(f"`--lora_alpha` must be > 0, got {script_args.lora_alpha}.")
    if not 0.0 <= script_args.lora_dropout < 1.0:
        raise ValueError(f"`--lora_dropout` must be in [0, 1), got {script_args.lora_dropout}.")
    for name in ("max_train_per_group", "max_eval_per_group"):
        value = getattr(script_args, name)
        if value is not None and value < 1:
            raise ValueError(f"`--{name}` must be >= 1 (or left out for all rows), got {value}.")
    if script_args.hyper and script_args.hyper_context_size < 1:
        raise ValueError(f"`--hyper_context_size` must be >= 1, got {script_args.hyper_context_size}.")


def check_training_arguments(training_args) -> None:
    """The ``TrainingArguments`` values that ``Trainer`` rejects only once training starts (after the model is loaded
    and evaluated): the optimizer's numbers and class, the learning-rate schedule and the ``--report_to``
    integrations, each error naming its option. The optimizer and scheduler are built on a one-parameter stand-in."""
    import torch
    from transformers import Trainer, get_scheduler
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    checks.check_optimizer_options(training_args)
    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args)
        optimizer = optimizer_cls([parameter], **optimizer_kwargs)
    except (ValueError, ImportError, RuntimeError, TypeError) as error:
        raise ValueError(
            f"`--optim`: {_value(training_args.optim)!r} cannot be built with these options ({_first_line(error)})."
        ) from error
    steps = training_args.max_steps if training_args.max_steps > 0 else 1000
    try:
        get_scheduler(
            training_args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=training_args.get_warmup_steps(steps),
            num_training_steps=steps,
            scheduler_specific_kwargs=training_args.lr_scheduler_kwargs or {},
        )
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"`--lr_scheduler_type`: {_value(training_args.lr_scheduler_type)!r} cannot be built with "
            f"`--lr_scheduler_kwargs` {training_args.lr_scheduler_kwargs or {}} ({_first_line(error)})."
        ) from error
    installed = get_available_reporting_integrations()
    for name in training_args.report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(
                f"`--report_to`: unknown integration {name!r}; valid: {sorted(INTEGRATION_TO_CALLBACK)}, all, none."
            )
        if name not in installed:
            raise ValueError(
                f"`--report_to`: {name!r} is not installed in this environment (installed integrations: "
                f"{installed or 'none'}); install it, or pass `--report_to none`."
            )


def _value(option) -> str:
    """An option's value as typed (the value of a ``TrainingArguments`` enum)."""
    return str(getattr(option, "value", option))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# What a resumed `hf-egt train` must share with the run that saved the checkpoint (`hf_egt.core.resume`).
TRAIN_RECORD_FIELDS = {
    "model_name_or_path": ("--model_name_or_path", True),
    "dataset": ("--dataset", True),
    "groups": ("--groups", False),
    "lora_r": ("--lora_r", False),
    "lora_target_modules": ("--lora_target_modules", False),
    "lora_alpha": ("--lora_alpha", True),
    "lora_dropout": ("--lora_dropout", True),
    "hyper": ("--hyper", False),
    "objective": ("--objective", False),
    **GROUP_OBJECTIVE_RECORD_FIELDS,
    "group_loss_unit": ("--group_loss_unit", True),
    "group_reference": ("--group_reference", True),
}


# HyperLoRA options that set the shape of the saved hypernetwork (the others, PLE's, may change on request).
HYPER_SHAPE_FIELDS = ("set_encoder_input", "context_dim", "set_encoder_hidden", "hidden_size", "head_rank")


def train_record_fields() -> dict:
    """``TRAIN_RECORD_FIELDS`` and the HyperLoRA options, as ``hf_egt.core.resume.RecordField``s."""
    from hf_egt.core.resume import RecordField
    from hf_egt.integrations.hyper.config import option_name

    fields = {key: RecordField(option, may_change) for key, (option, may_change) in TRAIN_RECORD_FIELDS.items()}
    for name in TRAIN_HYPER_FIELDS:
        fields[f"hyper_{name}"] = RecordField(f"--{option_name(name)}", name not in HYPER_SHAPE_FIELDS)
    return fields


def train_run_record(script_args: TrainScriptArguments, training_args, split: Mapping) -> dict:
    """This run's compatibility record (written into every checkpoint; compared on resume)."""
    from hf_egt.core.resume import dataset_entry

    record = {
        "model_name_or_path": resolved_model_path(script_args.model_name_or_path),
        "dataset": dataset_entry(script_args.dataset, split["train_sha256"]),
        "groups": list(split["groups"]),
        "lora_r": script_args.lora_r,
        "lora_target_modules": list(script_args.lora_target_modules),
        "lora_alpha": script_args.lora_alpha,
        "lora_dropout": script_args.lora_dropout,
        "hyper": script_args.hyper,
    }
    record.update({key: getattr(training_args, key) for key in TRAIN_RECORD_FIELDS if key not in record})
    record["group_sampling_exponent"] = recorded_sampling_exponent(
        training_args.group_sampling, training_args.group_sampling_exponent
    )
    if script_args.hyper:
        record.update({f"hyper_{name}": value for name, value in script_args.hyper_options.items()})
    return record


def training_settings(training_args, script_args: TrainScriptArguments, num_processes: int) -> dict:
    """The settings behind a run's numbers, for its card and report."""
    settings = {
        "learning rate": training_args.learning_rate,
        "max steps": training_args.max_steps,
        "epochs": training_args.num_train_epochs if training_args.max_steps < 0 else None,
        "batch size per device": training_args.per_device_train_batch_size,
        "gradient accumulation steps": training_args.gradient_accumulation_steps,
        "processes": num_processes,
        "seed": training_args.seed,
        "LoRA rank / alpha": f"{script_args.lora_r} / {script_args.lora_alpha}",
    }
    if training_args.objective == "minmax":
        settings["group step size"] = training_args.group_step_size
    if training_args.objective == "ema":
        settings["group EMA decay / temperature"] = (
            f"{training_args.group_ema_decay} / {training_args.group_temperature}"
        )
    if training_args.group_adjustment:
        settings["group adjustment"] = training_args.group_adjustment
    if script_args.hyper:
        settings["PLE weight"] = script_args.hyper_options["ple_weight"]
    return {key: value for key, value in settings.items() if value is not None}


def save_hyper_artifacts(trainer, output_dir: Path) -> None:
    """The hypernetwork in ``output_dir/hypernetwork`` (a HyperLoRA peft adapter) and, in ``output_dir``,
    a plain peft adapter holding the LoRA weights generated for the context fixed after training (the set of
    the first ``--hyper_context_size`` training rows, the context set)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(output_dir / HYPERNETWORK_FOLDER)
    model.export_peft(output_dir)


def hyper_usage(base_model: str, model_name: str, context_size: int) -> str:
    """The card's loading snippet for ``--hyper`` artifacts: the exported adapter, then the hypernetwork."""
    return (
        f"The adapter in this folder holds the LoRA weights the hypernetwork generated for a set of {context_size} "
        "training rows (the weights the table's last column measured); it loads with plain peft:\n\n"
        "```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{model_name}")\n```\n\n'
        "The hypernetwork itself (to generate LoRA weights for another set of examples) is a peft adapter of the "
        "HyperLoRA method, which `import hf_egt` registers with peft:\n\n"
        "```python\nimport hf_egt  # registers the HyperLoRA peft method\n"
        "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base_model}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_name}")\n'
        f'model = PeftModel.from_pretrained(base, "{model_name}", subfolder="{HYPERNETWORK_FOLDER}")\n'
        'texts = ["a first example of the new set", "a second example"]  # a new set of examples\n'
        'model.set_context(**tokenizer(texts, return_tensors="pt", padding=True))\n```'
    )


def run_train(argv: Sequence[str]) -> dict:
    """``hf-egt train``: validate, train (or resume), evaluate per group, save adapter + split + report + card, push.

    Every check that can fail (options, output folder, checkpoint, data, model path) runs before the model is loaded.
    """
    from hf_egt.apps.data import load_grouped_splits, write_split_record
    from hf_egt.core.resume import check_run_record
    from hf_egt.integrations.evaluation import write_report
    from hf_egt.integrations.hub import check_hub_reachable, resolve_hub_token
    from hf_egt.integrations.trainer import EGTTrainer, RunRecordCallback, check_checkpoint, resolve_groups

    script_args, training_args = parse_train_arguments(argv)
    check_train_arguments(script_args, training_args)
    check_training_arguments(training_args)
    output_dir = Path(training_args.output_dir)
    resume = checks.resolve_resume(training_args.resume_from_checkpoint, output_dir)
    checks.check_resume_allow_changes(script_args.resume_allow_changes, resume)
    replaced = checks.check_output_dir(output_dir, resume, script_args.overwrite_output_dir)
    push, repo_id, token = training_args.push_to_hub, training_args.hub_model_id, training_args.hub_token
    if push:
        if not repo_id:
            raise ValueError("`--push_to_hub` needs `--hub_model_id` (e.g. `--hub_model_id you/smollm2-egt`).")
        token = resolve_hub_token(token)
        check_hub_reachable(token)  # before any data or model is loaded; the upload is at the end
    if "wandb" in (training_args.report_to or []):
        os.environ.setdefault("WANDB_DIR", str(output_dir))  # wandb's files under output_dir, like TensorBoard's
    data = load_grouped_splits(
        script_args.dataset,
        text_column=training_args.text_column,
        group_column=training_args.group_column,
        groups=training_args.groups,
        max_train_per_group=script_args.max_train_per_group,
        max_eval_per_group=script_args.max_eval_per_group,
        eval_fraction=script_args.eval_fraction,
        train_split=script_args.train_split,
        eval_split=script_args.eval_split,
        config=script_args.dataset_config,
        token=token,
        seed=training_args.seed,
        skip_unusable_groups=script_args.skip_unusable_groups,
    )
    train, evaluation, groups = data.train, data.evaluation, data.groups
    run_record = train_run_record(script_args, training_args, data.split)
    resume_changes = []
    if resume is not None:
        trainer_groups = resolve_groups(training_args.groups, list(train[training_args.group_column]), {})
        check_checkpoint(resume, trainer_groups, training_args.objective)
        resume_changes = check_run_record(
            resume, run_record, train_record_fields(), script_args.resume_allow_changes, "--resume_from_checkpoint"
        )
    checks.check_model_path(script_args.model_name_or_path)
    checks.check_target_modules(script_args.model_name_or_path, script_args.lora_target_modules)
    base_model = resolved_model_path(script_args.model_name_or_path)
    peft_config = build_peft_config(script_args, base_model)
    model, tokenizer = checks.load_checked_causal_lm(script_args.model_name_or_path)
    # peft records the model's `name_or_path` as the adapter's `base_model_name_or_path`: a local folder must be
    # recorded absolute, so that the adapter (and the card's snippet) loads from any working directory
    model.name_or_path = model.config._name_or_path = base_model
    context_set = None
    if script_args.hyper:  # the set whose encoding fixes the context of every evaluation and of the exported adapter
        from hf_egt.integrations.hyper import FixedContextCallback, tokenize_context_set

        texts = train[training_args.text_column][: script_args.hyper_context_size]
        context_set = tokenize_context_set(tokenizer, texts, training_args.max_length)
    trainer = EGTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[RunRecordCallback(run_record)]
        + ([FixedContextCallback(context_set)] if context_set is not None else []),
    )
    runs = {}
    if script_args.eval_base:
        runs["base"] = trainer.evaluate_groups()
    # Every check has passed: only now does `--overwrite_output_dir` remove the earlier run's checkpoints.
    if trainer.is_world_process_zero():
        if replaced:
            checks.remove_checkpoints(output_dir)
        write_split_record(data.split, output_dir)
    trainer.train(resume_from_checkpoint=resume)
    context_size = None
    if context_set is not None:
        from hf_egt.integrations.hyper import fix_context

        # on every process, so that the final evaluation measures exactly the adapter `save_hyper_artifacts` exports
        fix_context(trainer.accelerator.unwrap_model(trainer.model), context_set)
        context_size = len(context_set["input_ids"])
    runs[training_args.objective] = trainer.evaluate_groups()
    trainer.save_model(str(output_dir))
    result = {"runs": runs, "output_dir": str(output_dir), "dropped": data.dropped, "split": data.split}
    if not trainer.is_world_process_zero():
        return result
    if script_args.hyper:
        save_hyper_artifacts(trainer, output_dir)
    command = redacted_command("hf-egt train", argv)
    settings = training_settings(training_args, script_args, trainer.accelerator.num_processes)
    if resume_changes:
        settings["changed on resume"] = "; ".join(resume_changes)
    held_out = f"held out: {held_out_sentence(data.split)}; recorded in split.json"
    config = {
        "model_name_or_path": script_args.model_name_or_path,
        "dataset": script_args.dataset,
        "groups": groups,
        "num_processes": trainer.accelerator.num_processes,
        "settings": settings,
        "eval_counts": data.split["eval_counts"],
        "train_counts": data.split["train_counts"],
        "held_out": held_out,
        "dropped": data.dropped,
        "resumed_from": resume,
        "resume_changes": resume_changes,
    }
    paths = write_report(
        runs,
        output_dir,
        title=f"hf-egt: {script_args.model_name_or_path} on {script_args.dataset}",
        config=config,
        command=command,
        held_out=held_out,
        dropped=data.dropped,
    )
    model_name = repo_id or output_dir.name
    card_kwargs = dict(
        runs=runs,
        model_name=model_name,
        dataset_name=script_args.dataset,
        base_model=base_model,
        command=command,
        adapter_description="HyperLoRA (hypernetwork-generated LoRA), exported as a peft LoRA adapter"
        if script_args.hyper
        else None,
        usage=hyper_usage(base_model, model_name, context_size) if script_args.hyper else None,
        eval_counts=data.split["eval_counts"],
        settings=settings,
        dropped=data.dropped,
        held_out=held_out,
    )
    result["paths"] = {key: str(path) for key, path in paths.items()}
    result["held_out"] = held_out
    if push:  # the adapter is saved (and, with --hyper, exported) above: upload the folder as it is
        commit = trainer.push_to_hub(token=token, save_model_first=False, **card_kwargs)
        result["commit_url"] = str(commit.commit_url)
    else:
        trainer.create_model_card(**card_kwargs)
    return result
