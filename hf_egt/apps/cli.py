"""The ``hf-egt`` command line.

    hf-egt train            fine-tune a causal LM with LoRA and a group objective (EGTTrainer), report, card, push
    hf-egt train-diffusion  LoRA-fine-tune a diffusers model with a group objective (hf_egt.apps.train_diffusion)
    hf-egt evaluate         per-group perplexity and EGT divergence of a model (+ adapter) on a dataset
    hf-egt demo             the offline demo: SmolLM2-135M on BOLD race, base vs ERM vs min-max

``train`` parses every ``transformers.TrainingArguments`` option (through ``EGTConfig``), and runs unchanged under
``accelerate launch -m hf_egt.apps.cli train ...``. Bad input (unknown dataset, column or group, a model without a
causal-LM head, a push without a token or to an unreachable Hub, an optimizer, schedule or ``--report_to``
integration Trainer would reject, a missing, truncated or foreign checkpoint, one whose compatibility record differs
from the run's, an output folder holding another run) fails before any model is loaded or trained, and before
``--overwrite_output_dir`` removes anything. From the ``hf-egt`` console script (or ``python -m hf_egt``) such an error
prints one ``error: ...`` line and exits with status 2; ``hf-egt --debug ...`` (or ``HF_EGT_DEBUG=1``) shows the
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_egt import __version__
from hf_egt.apps.arguments import (
    FALSE_STRINGS,
    TRUE_STRINGS,
    DefaultsHelpFormatter,
    add_dashed_aliases,
    add_renamed_options,
    redacted_command,
)
from hf_egt.apps.recipe import DEMO_RENAMED_OPTIONS
from hf_egt.core.resume import GROUP_OBJECTIVE_RECORD_FIELDS, resolved_model_path
from hf_egt.core.vocabulary import LEGACY_OBJECTIVE_STATE_NAMES, OBJECTIVE_STATE_NAME

logger = logging.getLogger("hf_egt.apps.cli")

COMMANDS = {
    "train": "fine-tune a causal LM with LoRA and a group objective (all TrainingArguments options apply)",
    "train-diffusion": "train a diffusion model with a group objective (LoRA or HyperLoRA on a diffusers UNet)",
    "evaluate": "per-group perplexity and EGT divergence of a model (and adapter) on a dataset",
    "demo": "offline demo: SmolLM2-135M on BOLD race, base vs ERM vs min-max, with report and plot",
}
FORWARDED = ("train", "train-diffusion")
# What a finished or interrupted run leaves in its output folder: a fresh run must not overwrite it silently.
RUN_OUTPUTS = ("adapter_model.safetensors", "model.safetensors", "report.json", OBJECTIVE_STATE_NAME)
RUN_OUTPUTS += LEGACY_OBJECTIVE_STATE_NAMES
DEBUG_ENV = "HF_EGT_DEBUG"


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


def check_model_path(model_name_or_path: str) -> None:
    """Raise a ``FileNotFoundError`` naming ``--model_name_or_path`` when it is neither an existing file or folder nor
    something the Hub (or its cache, offline) can resolve; then ``check_causal_lm`` (config only, no weights)."""
    path = Path(model_name_or_path).expanduser()
    looks_local = (
        path.suffix == ".gguf" or model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    )
    if not path.exists() and looks_local:
        raise FileNotFoundError(
            f"`--model_name_or_path`: no such file or folder {model_name_or_path!r}; pass a folder with a "
            "config.json, a .gguf file, or a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct."
        )
    try:
        check_causal_lm(str(path) if path.exists() else model_name_or_path)
    except OSError as error:  # includes huggingface_hub's errors for unknown or unreachable repos
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"`--model_name_or_path`: cannot load {model_name_or_path!r}: not a local folder with a config.json, "
            f"and the Hub (or its offline cache) does not have it ({first_line})."
        ) from error
    except ValueError as error:
        if str(error).startswith("`--model_name_or_path`"):
            raise
        raise ValueError(
            f"`--model_name_or_path`: {model_name_or_path!r} is not a valid folder or Hub id ({error})."
        ) from error


def check_target_modules(model_name_or_path: str, target_modules: Sequence[str]) -> None:
    """Every ``--lora_target_modules`` entry must name layers of the model (peft matches a name or a dotted suffix),
    checked on an empty (meta-device) model built from the config: no weights are read."""
    if list(target_modules) == ["all-linear"] or Path(model_name_or_path).suffix == ".gguf":
        return
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_name_or_path))
    names = [name for name, _ in model.named_modules()]
    missing = [key for key in target_modules if not any(n == key or n.endswith(f".{key}") for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"`--lora_target_modules`: {missing} match no layer of {model_name_or_path!r}; its linear layers are "
            f"{linear} (or pass `all-linear`)."
        )


def load_checked_causal_lm(model_name_or_path: str):
    """``hf_egt.apps.offline.load_causal_lm`` (Hub id, folder or ``.gguf`` file) after ``check_causal_lm``."""
    from hf_egt.apps.offline import load_causal_lm

    check_causal_lm(model_name_or_path)
    return load_causal_lm(model_name_or_path)


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: ``true`` (or ``latest``) is the last checkpoint of ``output_dir``, a path is
    itself; ``false`` or nothing is a fresh run. A missing checkpoint is a ``FileNotFoundError``."""
    from hf_egt.integrations.trainer import last_checkpoint

    if value is None or value is False or str(value).lower() in FALSE_STRINGS:
        return None
    if value is True or str(value).lower() in TRUE_STRINGS:
        return last_checkpoint(output_dir)
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"`--resume_from_checkpoint`: no such checkpoint folder {value!r}; pass a `checkpoint-<step>` folder, or "
            f"`true` for the last one in `--output_dir` {output_dir!r}."
        )
    return str(value)


def run_outputs(output_dir: str | Path) -> list[str]:
    """The checkpoints and output files of an earlier run found in ``output_dir`` (empty for a new folder)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = sorted(path.name for path in folder.glob("checkpoint-*") if path.is_dir())
    return found + [name for name in RUN_OUTPUTS if (folder / name).exists()]


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> list[str]:
    """Refuse (``ValueError``) a fresh run into a folder holding another run's outputs unless ``overwrite``; returns
    those outputs (what ``overwrite`` replaces)."""
    existing = [] if resume else run_outputs(output_dir)
    if existing and not overwrite:
        raise ValueError(
            f"`--output_dir`: {str(output_dir)!r} already holds the outputs of a run ({', '.join(existing[:6])}); pass "
            "`--resume_from_checkpoint true` to continue it, `--overwrite_output_dir` to replace it, or another "
            "`--output_dir`."
        )
    return existing


def remove_checkpoints(output_dir: str | Path) -> None:
    """Delete the ``checkpoint-*`` folders of an earlier run (``--overwrite_output_dir``), so that a later
    ``--resume_from_checkpoint true`` cannot pick one of them."""
    for path in sorted(Path(output_dir).glob("checkpoint-*")):
        if path.is_dir():
            logger.warning("--overwrite_output_dir: removing %s of an earlier run.", path)
            shutil.rmtree(path)


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
EVALUATE_RENAMED_OPTIONS = {
    "--max_per_group": "--max_eval_per_group",
    "--split": "--eval_split",
    "--batch_size": "--per_device_eval_batch_size",
    "--compare_base": "--eval_base",
}
# the demo's settings' old names (shared with benchmarks/quality_bold.py), and its old flag for "no EGT"
DEMO_COMMAND_RENAMED_OPTIONS = {**DEMO_RENAMED_OPTIONS, "--no_egt": "--feature_model none"}


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

    script_args, training_args, hyper_namespace, unknown = train_parser().parse_args_into_dataclasses(
        args=list(argv), return_remaining_strings=True
    )
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

    bounds = (
        ("learning_rate", training_args.learning_rate >= 0, ">= 0"),
        ("weight_decay", training_args.weight_decay >= 0, ">= 0"),
        ("adam_beta1", 0 <= training_args.adam_beta1 < 1, "in [0, 1)"),
        ("adam_beta2", 0 <= training_args.adam_beta2 < 1, "in [0, 1)"),
        ("adam_epsilon", training_args.adam_epsilon >= 0, ">= 0"),
        ("warmup_steps", training_args.warmup_steps >= 0, ">= 0"),
    )
    for name, valid, rule in bounds:
        if not valid:
            raise ValueError(f"`--{name}` must be {rule}, got {getattr(training_args, name)}.")
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


def held_out_sentence(record: Mapping) -> str:
    """How the eval rows of a ``split.json`` record were held out, in words."""
    if record.get("held_out") == "split":
        how = f"split {record['eval_split']!r} of the dataset"
    elif record.get("held_out") == "by person":
        how = f"{100 * record['eval_fraction']:.0f}% of the people of each group, seed {record['seed']}"
    else:
        how = f"{100 * record['eval_fraction']:.0f}% of the rows of each group, seed {record['seed']}"
    return f"{how} ({sum(record['eval_counts'].values())} rows)"


def save_hyper_artifacts(trainer, output_dir: Path) -> None:
    """The hypernetwork in ``output_dir/hypernetwork`` (a HyperLoRA peft adapter) and, in ``output_dir``,
    a plain peft adapter holding the LoRA weights generated for the context fixed after training (the set of
    the first ``--hyper_context_size`` training rows, the context set)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(output_dir / HYPERNETWORK_FOLDER)
    model.export_peft(output_dir)


HYPERNETWORK_FOLDER = "hypernetwork"


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
    resume = resolve_resume(training_args.resume_from_checkpoint, str(output_dir))
    if script_args.resume_allow_changes and resume is None:
        raise ValueError("`--resume_allow_changes` only applies with `--resume_from_checkpoint`.")
    replaced = check_output_dir(output_dir, resume, script_args.overwrite_output_dir)
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
    check_model_path(script_args.model_name_or_path)
    check_target_modules(script_args.model_name_or_path, script_args.lora_target_modules)
    base_model = resolved_model_path(script_args.model_name_or_path)
    peft_config = build_peft_config(script_args, base_model)
    model, tokenizer = load_checked_causal_lm(script_args.model_name_or_path)
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
            remove_checkpoints(output_dir)
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
    )
    append_report_notes(paths["md"], held_out, data.dropped)
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


def append_report_notes(markdown_path: str | Path, held_out: str | None, dropped: Sequence[str]) -> None:
    """Add how the eval rows were held out and what was left out to ``report.md``."""
    lines = [f"Evaluation rows: {held_out}.", ""] if held_out else []
    if dropped:
        lines += ["Left out:", "", *[f"- {item}" for item in dropped], ""]
    if lines:
        path = Path(markdown_path)
        path.write_text(path.read_text(encoding="utf-8") + "\n" + "\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------- evaluate
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_egt.core.metrics import DIVERGENCES, RECOMMENDED_TEXT_DIVERGENCE

    parser.add_argument(
        "--model_name_or_path", required=True, help="Hub id, local folder or .gguf file of a causal LM."
    )
    parser.add_argument("--adapter", default=None, help="A peft adapter (folder or Hub id) to apply to the model.")
    parser.add_argument(
        "--eval_base",
        action="store_true",
        help="With --adapter: also evaluate the base model (without --adapter, the base model is what is evaluated).",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="bold-<domain>, bible-<language>-..., a local json/csv/parquet file, or a Hub id.",
    )
    parser.add_argument("--dataset_config", default=None, help="Configuration of a Hub dataset.")
    parser.add_argument(
        "--eval_split",
        default=None,
        help="Evaluate on this split (default: test/validation if present, else held-out "
        "rows; with --adapter, the rows recorded in its split.json).",
    )
    parser.add_argument("--text_column", default="text", help="Column of the text to evaluate.")
    parser.add_argument("--group_column", default="group", help="Column of each row's group.")
    parser.add_argument(
        "--groups",
        nargs="+",
        default=None,
        help="Evaluate these groups only (default: every group of the data). A group of the data not listed is an "
        "error naming its rows, unless --skip_unusable_groups, which leaves it out with a warning in the report.",
    )
    parser.add_argument(
        "--max_eval_per_group", type=int, default=None, help="At most this many eval rows per group (default: all)."
    )
    parser.add_argument(
        "--feature_model",
        default="minilm",
        help="Sentence encoder for the EGT divergence: 'minilm' (offline all-MiniLM-L6-v2), a Hub id or folder, "
        "or 'none' to skip generation.",
    )
    parser.add_argument(
        "--divergence",
        default=RECOMMENDED_TEXT_DIVERGENCE,
        choices=list(DIVERGENCES),
        help="Divergence of the EGT report (hf_egt.core.metrics.DIVERGENCES); the default is the one docs/metric.md "
        "supports at ~100 samples per group.",
    )
    parser.add_argument(
        "--max_prompts_per_group",
        type=int,
        default=100,
        help="Prompts (sentence prefixes) per group; EGT needs hf_egt.core.metrics.minimum_samples(divergence) "
        "of them.",
    )
    parser.add_argument(
        "--ignore_recorded_split",
        action="store_true",
        help="With --adapter: do not reuse the held-out rows recorded in its split.json (default: reuse them).",
    )
    parser.add_argument(
        "--skip_unusable_groups",
        action="store_true",
        help="Leave out, with a warning repeated in the report, groups too small to evaluate, groups not listed in "
        "--groups and rows without group or text (default: an error naming them).",
    )
    parser.add_argument("--eval_fraction", type=float, default=0.2, help="Held-out share without an eval split.")
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace the report of an earlier evaluation in --output_dir (refused otherwise).",
    )
    parser.add_argument("--num_prompt_words", type=int, default=4, help="Words of each sentence kept as the prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=24, help="Tokens generated per prompt (EGT).")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=8, help="Rows per forward pass.")
    parser.add_argument("--max_length", type=int, default=512, help="Truncation length (tokens) of each row.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the held-out split, subsampling and generation.")
    parser.add_argument("--output_dir", default="outputs/evaluate", help="Where report.json/.md/.png go.")
    add_dashed_aliases(parser)  # `--max-eval-per-group`, as `hf-egt train` accepts its options
    parser.formatter_class = DefaultsHelpFormatter
    add_renamed_options(parser, EVALUATE_RENAMED_OPTIONS, "hf-egt evaluate")


def load_feature_model(name: str) -> tuple:
    """The ``(model, tokenizer)`` of ``--feature_model``, loaded before any perplexity or generation, or an error that
    names the option (a missing folder, a Hub id that cannot be found or is not cached offline, a non-encoder)."""
    from hf_egt.integrations.features import load_text_encoder

    if not Path(name).exists() and name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"`--feature_model`: no such folder {name!r}.")
    try:
        return load_text_encoder(name)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"`--feature_model` {name!r} could not be loaded as a text encoder ({type(error).__name__}: {error}). "
            "Pass 'minilm' (all-MiniLM-L6-v2, offline), a Hub id or local folder of a Hugging Face encoder, or "
            "'none' for perplexity only."
        ) from error


def recorded_split(args: argparse.Namespace) -> dict | None:
    """The ``split.json`` of ``--adapter`` to reuse, or ``None`` (no adapter, no record, ``--split`` or
    ``--ignore_recorded_split`` given)."""
    from hf_egt.apps.data import read_split_record

    if (
        args.adapter is None
        or args.eval_split is not None
        or args.ignore_recorded_split
        or not Path(args.adapter).is_dir()
    ):
        return None
    return read_split_record(args.adapter)


def check_adapter_path(adapter: str | None) -> None:
    """A local ``--adapter`` folder must hold ``adapter_config.json``; anything else is taken as a Hub id."""
    if adapter is None:
        return
    path = Path(adapter)
    if path.is_dir() and not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"`--adapter`: {adapter!r} has no adapter_config.json; pass the output folder of `hf-egt train` (or any "
            "peft adapter folder)."
        )
    if not path.exists() and (adapter.startswith((".", "/", "~")) or adapter.count("/") > 1):
        raise FileNotFoundError(f"`--adapter`: no such folder {adapter!r}.")


def check_egt_sample_sizes(groups: Sequence[str], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Groups with too few prompts for ``--divergence``'s estimator: ``(too_small, messages)``; an error unless
    ``--skip_unusable_groups``. Runs before the model is loaded."""
    from hf_egt.integrations.evaluation import groups_too_small_for_egt

    minimum, small = groups_too_small_for_egt(groups, args.divergence, args.max_prompts_per_group)
    if not small:
        return [], []
    counts = {group: list(groups).count(group) for group in sorted(set(groups))}
    message = (
        f"group(s) {list(small)} have {list(small.values())} eval row(s) to prompt with, but the "
        f"{args.divergence!r} estimator needs at least {minimum} per group (`--max_prompts_per_group` "
        f"{args.max_prompts_per_group}, eval rows per group {counts})"
    )
    if not args.skip_unusable_groups:
        raise ValueError(
            f"{message}; add eval rows (`--max_eval_per_group`, a larger `--eval_fraction`), use "
            "`--feature_model none` for perplexity only, or pass `--skip_unusable_groups` to leave them out with a "
            "warning."
        )
    logger.warning("Left out of the evaluation: %s.", message)
    return list(small), [f"{message}: left out of the evaluation (perplexity and EGT)"]


def run_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """``hf-egt evaluate``: per-group report of a model (and adapter) on a dataset.

    With ``--adapter`` the output folder of ``hf-egt train``, the held-out rows recorded in its ``split.json`` are
    evaluated (same dataset, seed, fraction and subsampling; checked by content), and the report says so. Every check
    (divergence name, sample sizes, paths, data) runs before the model is loaded.
    """
    from hf_egt.apps.data import load_grouped_splits, subsample_per_group
    from hf_egt.apps.offline import resolve_feature_model
    from hf_egt.core.metrics.validation import minimum_samples
    from hf_egt.integrations.evaluation import evaluate_causal_lm, write_report

    feature_model = resolve_feature_model(args.feature_model)
    encoder = None
    if feature_model is not None:
        minimum_samples(args.divergence)  # an unknown name fails here, not after generation
        encoder = load_feature_model(feature_model)  # before any data, perplexity or generation work
    check_adapter_path(args.adapter)
    if (Path(args.output_dir) / "report.json").exists() and not args.overwrite_output_dir:
        raise ValueError(
            f"`--output_dir`: {args.output_dir!r} already holds a report (report.json); pass `--overwrite_output_dir` "
            "to replace it, or another `--output_dir`."
        )
    for name in (
        "max_eval_per_group",
        "max_prompts_per_group",
        "max_new_tokens",
        "per_device_eval_batch_size",
        "max_length",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    record = recorded_split(args)
    options = {
        "text_column": args.text_column,
        "group_column": args.group_column,
        "groups": args.groups,
        "eval_split": args.eval_split,
        "config": args.dataset_config,
        "seed": args.seed,
        "eval_fraction": args.eval_fraction,
        "skip_unusable_groups": args.skip_unusable_groups,
    }
    if record is not None:
        options.update(
            text_column=record["text_column"],
            group_column=record["group_column"],
            groups=record["groups"],
            train_split=record["train_split"],
            eval_split=record["eval_split"],
            config=record["dataset_config"],
            seed=record["seed"],
            eval_fraction=record["eval_fraction"],
            # split records written before the rename name it max_per_group
            max_train_per_group=record.get("max_train_per_group", record.get("max_per_group")),
            max_eval_per_group=record["max_eval_per_group"],
            # what training left out (and recorded) is left out again, and the report repeats it
            skip_unusable_groups=args.skip_unusable_groups or bool(record["dropped"]),
        )
    data = load_grouped_splits(args.dataset, **options)
    evaluation, dropped = data.evaluation, list(data.dropped)
    text_column, group_column = options["text_column"], options["group_column"]
    if record is not None:
        source = Path(args.adapter) / "split.json"
        if data.split["eval_sha256"] != record["eval_sha256"]:
            raise ValueError(
                f"`--dataset`: the held-out rows of {args.dataset!r} do not match those recorded in {source} (from "
                f"{record['dataset']!r}): the data changed. Evaluate on the training data, or pass "
                "`--ignore_recorded_split` to split this dataset anew (its rows may then overlap the training rows)."
            )
        held_out = f"reused from {source}: {held_out_sentence(record)}"
    else:
        held_out = f"held out: {held_out_sentence(data.split)}"
    logger.info("Evaluation rows %s.", held_out)
    evaluation = subsample_per_group(evaluation, group_column, args.max_eval_per_group, args.seed)
    groups = [str(group) for group in evaluation[group_column]]
    if feature_model is not None:
        too_small, messages = check_egt_sample_sizes(groups, args)
        if too_small:
            keep = [i for i, group in enumerate(groups) if group not in set(too_small)]
            evaluation, groups = evaluation.select(keep), [groups[i] for i in keep]
            dropped += messages
        if not groups:
            raise ValueError(f"No group is left to evaluate: {messages[0]}.")
    check_model_path(args.model_name_or_path)
    model, tokenizer = load_checked_causal_lm(args.model_name_or_path)
    texts = list(evaluation[text_column])
    kwargs = {
        "batch_size": args.per_device_eval_batch_size,
        "max_length": args.max_length,
        "feature_model": encoder,
        "num_prompt_words": args.num_prompt_words,
        "max_new_tokens": args.max_new_tokens,
        "max_prompts_per_group": args.max_prompts_per_group,
        "divergence": args.divergence,
        "seed": args.seed,
    }
    runs = {}
    if args.adapter is None or args.eval_base:
        runs["base"] = evaluate_causal_lm(model, tokenizer, texts, groups, name="base", **kwargs)
    if args.adapter is not None:
        from peft import PeftModel

        name = Path(args.adapter).name or "adapter"
        model = PeftModel.from_pretrained(model, args.adapter)
        runs[name] = evaluate_causal_lm(model, tokenizer, texts, groups, name=name, **kwargs)
    config = {key: value for key, value in vars(args).items() if key != "command"}
    config.update(held_out=held_out, dropped=dropped, eval_counts={g: groups.count(g) for g in sorted(set(groups))})
    paths = write_report(
        runs,
        args.output_dir,
        title=f"hf-egt: {args.adapter or args.model_name_or_path} on {args.dataset}",
        config=config,
        command=redacted_command("hf-egt evaluate", argv),
    )
    append_report_notes(paths["md"], held_out, dropped)
    return {
        "runs": runs,
        "paths": {key: str(path) for key, path in paths.items()},
        "held_out": held_out,
        "dropped": dropped,
    }


# -------------------------------------------------------------------------------------------------------------- demo
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options: each overrides the ``DemoSettings`` field of its name in the preset (``DEFAULT`` /
    ``QUICK`` of ``hf_egt.apps.recipe``), so they default to ``None``; the names are those of ``hf-egt train`` /
    ``evaluate``."""
    from hf_egt.core.objective import OBJECTIVE_MODES

    parser.add_argument("--output_dir", default="outputs/demo", help="Where the report, plot and adapters go.")
    parser.add_argument("--quick", action="store_true", help="Smaller preset (about 5 minutes on 2 CPU cores).")
    advanced = parser.add_argument_group("advanced (override the preset)")
    advanced.add_argument("--model_name_or_path", default=None, help="A causal LM instead of the offline SmolLM2.")
    advanced.add_argument(
        "--feature_model",
        default=None,
        help="Sentence encoder for the EGT divergence: 'minilm' (offline all-MiniLM-L6-v2), a Hub id or folder, or "
        "'none' to skip generation and the EGT divergence (default: the preset's, minilm; --quick: none).",
    )
    advanced.add_argument("--max_steps", type=int, default=None)
    advanced.add_argument("--max_train_per_group", type=int, default=None)
    advanced.add_argument("--max_eval_per_group", type=int, default=None)
    advanced.add_argument("--max_prompts_per_group", type=int, default=None)
    advanced.add_argument("--per_device_train_batch_size", type=int, default=None)
    advanced.add_argument("--group_step_size", type=float, default=None)
    advanced.add_argument(
        "--objective",
        default=None,
        choices=[mode for mode in OBJECTIVE_MODES if mode != "erm"],  # the other run is the ERM baseline
        help="Group objective of the 'minmax' run (default: minmax, exponentiated-gradient group DRO).",
    )
    add_renamed_options(parser, DEMO_COMMAND_RENAMED_OPTIONS, "hf-egt demo")


def demo_settings(args: argparse.Namespace):
    """The preset (``QUICK`` with ``--quick``, else ``DEFAULT``) with each option given overriding the
    ``DemoSettings`` field of its name."""
    from dataclasses import fields, replace

    from hf_egt.apps.recipe import DEFAULT, QUICK, DemoSettings

    names = {field.name for field in fields(DemoSettings)}
    overrides = {name: value for name, value in vars(args).items() if name in names and value is not None}
    if str(overrides.get("feature_model", "")).lower() == "none":  # `--feature_model none`: no generation, no EGT
        overrides["feature_model"] = None
    return replace(QUICK if args.quick else DEFAULT, **overrides)


def run_demo_command(args: argparse.Namespace) -> dict:
    from hf_egt.apps.demo import run_demo

    settings = demo_settings(args)
    loader = None
    if args.model_name_or_path is not None:
        check_model_path(args.model_name_or_path)
        from hf_egt.apps.offline import load_causal_lm

        def loader():
            return load_causal_lm(args.model_name_or_path)

    return run_demo(args.output_dir, args.quick, settings=settings, model_loader=loader)


# -------------------------------------------------------------------------------------------------------------- main
def build_parser(commands_with_options: Sequence[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The ``hf-egt`` parser; only the sub-commands in ``commands_with_options`` get their options (their ``choices``
    come from the registries, which import torch: ``hf-egt --help`` stays instant)."""
    parser = argparse.ArgumentParser(
        prog="hf-egt",
        description="Equalized Generative Treatment for Hugging Face models: measure per-group generation quality "
        "and fix it with min-max LoRA fine-tuning.",
        epilog="Run `hf-egt COMMAND --help` for the options of a command.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"hf-egt {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"Show the traceback of an error (also: environment {DEBUG_ENV}=1)."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        # train / train-diffusion have their own parsers; their arguments (and --help) are forwarded.
        sub = commands.add_parser(
            name, help=help_text, description=help_text, add_help=name not in FORWARDED, allow_abbrev=False
        )
        if name == "evaluate" and name in commands_with_options:
            add_evaluate_arguments(sub)
        elif name == "demo" and name in commands_with_options:
            add_demo_arguments(sub)
    return parser


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of every command (``train``'s and ``train-diffusion``'s are their own, the others sub-parsers), for
    ``--help`` and for the test that each shared concept has one name and one default across them."""
    from hf_egt.apps.train_diffusion import build_parser as diffusion_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return {
        "train": train_parser(),
        "train-diffusion": diffusion_parser(),
        "evaluate": commands.choices["evaluate"],
        "demo": commands.choices["demo"],
    }


def _summary(result: Mapping) -> str:
    from hf_egt.core.metrics import runs_table

    lines = [runs_table(result["runs"])]
    if result.get("held_out"):
        lines.append(f"evaluation rows {result['held_out']}")
    for item in result.get("dropped", ()):
        lines.append(f"left out: {item}")
    for key, path in result.get("paths", {}).items():
        lines.append(f"{key}: {path}")
    if "commit_url" in result:
        lines.append(f"pushed: {result['commit_url']}")
    return "\n".join(lines)


def _without_global_options(argv: list[str]) -> list[str]:
    """``argv`` without the leading ``--debug`` (a global option; ``hf-egt train --debug`` is Trainer's own)."""
    while argv and argv[0] == "--debug":
        argv = argv[1:]
    return argv


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Entry point of the ``hf-egt`` commands; returns the command's result (for tests and scripts) and raises on
    bad input (``console_main`` turns that into one ``error:`` line and exit status 2)."""
    argv = _without_global_options(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser(argv[:1])
    args, rest = parser.parse_known_args(argv[:1] if argv and argv[0] in FORWARDED else argv)
    if args.command not in FORWARDED and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        result = run_train(argv[1:])
    elif args.command == "train-diffusion":
        from hf_egt.apps.train_diffusion import main as diffusion_main
        from hf_egt.apps.train_diffusion import parse_args as diffusion_parse_args

        return diffusion_main(diffusion_parse_args(argv[1:]))
    elif args.command == "evaluate":
        result = run_evaluate(args, argv[1:])
    else:
        result = run_demo_command(args)
    if result and "runs" in result:
        _write(_summary(result))
    return result


def console_main(argv: Sequence[str] | None = None) -> None:
    """The ``hf-egt`` console script (and ``python -m hf_egt``): runs ``main`` and exits 0 on success (``main``'s
    result is for Python callers; returned to ``sys.exit`` it would be printed and turned into exit status 1).

    Bad input (a ``ValueError`` or ``OSError`` such as ``FileNotFoundError``) prints ``error: <message>`` on one line
    and exits with status 2, as argparse does; ``--debug`` first or ``HF_EGT_DEBUG=1`` re-raises it instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"] or os.environ.get(DEBUG_ENV, "").lower() in TRUE_STRINGS
    try:
        main(argv)
    except (ValueError, OSError) as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"hf-egt: error: {message}\n")
        sys.exit(2)


if __name__ == "__main__":
    console_main()
