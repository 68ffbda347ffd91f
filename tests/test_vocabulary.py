"""One vocabulary: every command's options, read from its parser, give each shared concept one name and one default;
the old spellings still work (with a ``FutureWarning``); enumerations reject unknown values with the valid ones."""

from __future__ import annotations

import argparse
import re

import pytest

from hf_egt.apps.arguments import renamed_options_of
from hf_egt.apps.demo import DEMO_COMMAND_RENAMED_OPTIONS
from hf_egt.apps.evaluate import EVALUATE_RENAMED_OPTIONS
from hf_egt.apps.train import TRAIN_RENAMED_OPTIONS
from hf_egt.apps.train_diffusion import RENAMED_OPTIONS as DIFFUSION_RENAMED_OPTIONS
from hf_egt.core.objective import RENAMED_KEYWORDS, GroupObjective
from tests import REPO_ROOT

RENAMED = {
    "train": TRAIN_RENAMED_OPTIONS,
    "evaluate": EVALUATE_RENAMED_OPTIONS,
    "train-diffusion": DIFFUSION_RENAMED_OPTIONS,
    "demo": DEMO_COMMAND_RENAMED_OPTIONS,
}
# What each command needs to parse at all (its required options), by their current names.
REQUIRED = {
    "train": {"--model_name_or_path": "m", "--dataset": "d"},
    "evaluate": {"--model_name_or_path": "m", "--dataset": "d"},
    "train-diffusion": {"--model_name_or_path": "m", "--dataset": "d"},
    "demo": {},
}


def required_argv(command: str, leave_out: str | None = None) -> list[str]:
    return [arg for option, value in REQUIRED[command].items() if option != leave_out for arg in (option, value)]


# Options shared by name whose defaults (and scheduler names) differ on purpose: the training recipe of each family
# of models (TrainingArguments' for causal LMs, diffusers' LoRA scripts' for UNets) and each command's own output
# folder. docs/trainer.md ("One vocabulary") lists them.
RECIPE_OPTIONS = {
    "--output_dir",
    "--learning_rate",
    "--max_steps",
    "--per_device_train_batch_size",
    "--lr_scheduler_type",
    "--weight_decay",
    "--hyper_context_size",  # the context set: 64 training texts (train), 1024 training images (train-diffusion)
}
# Shared flags whose default is what each command does without them: `train` evaluates the base model before training
# unless `--eval_base false`; `evaluate --adapter` reports the adapter alone unless `--eval_base`.
COMMAND_DEFAULT_OPTIONS = {"--eval_base"}
# Values the old keywords of GroupObjective are tried with (each differs from the default).
KEYWORD_VALUES = {
    "mode": "ema",
    "step_size": 0.3,
    "adjustment": 0.2,
    "ema_decay": 0.5,
    "temperature": 2.0,
    "loss_estimate": "last",
    "weight_floor": 0.1,
}


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    from hf_egt.apps.cli import command_parsers

    return command_parsers()


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's own options by their underscore name (no help, no hidden renamed alias, no dashed twin)."""
    renamed = renamed_options_of(parser)
    return {
        option: action
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
        if option.startswith("--") and "-" not in option[2:] and option not in renamed
    }


def test_no_command_uses_a_spelling_another_surface_retired(parsers):
    retired = {old for renamed in RENAMED.values() for old in renamed}
    for command, parser in parsers.items():
        assert not retired & set(options(parser)), command
        assert renamed_options_of(parser).items() >= RENAMED[command].items(), command


def test_each_shared_option_has_one_default_and_one_set_of_choices(parsers):
    """The demo's options override its preset (default None = the preset's value), so only its names count here."""
    seen: dict[str, dict[str, argparse.Action]] = {}
    for command, parser in parsers.items():
        if command != "demo":
            for option, action in options(parser).items():
                seen.setdefault(option, {})[command] = action
    shared = {option: found for option, found in seen.items() if len(found) > 1}
    assert {"--seed", "--group_column", "--lora_r", "--lora_alpha", "--objective", "--max_length"} <= set(shared)
    for option, found in shared.items():
        if option in RECIPE_OPTIONS | COMMAND_DEFAULT_OPTIONS:
            continue
        choices = {command: action.choices and list(action.choices) for command, action in found.items()}
        assert len({repr(c) for c in choices.values()}) == 1, (option, choices)
        defaults = {command: action.default for command, action in found.items()}
        assert len({repr(d) for d in defaults.values()}) == 1, (option, defaults)
    demo = options(parsers["demo"])
    assert all(action.default in (None, False, "minilm", "outputs/demo") for action in demo.values())


def test_choices_come_from_the_registries(parsers):
    from hf_egt.core.metrics import DIVERGENCES
    from hf_egt.core.objective import LOSS_ESTIMATES, OBJECTIVE_MODES
    from hf_egt.core.samplers import GROUP_SAMPLINGS

    expected = {"--objective": OBJECTIVE_MODES, "--group_sampling": GROUP_SAMPLINGS}
    expected["--group_loss_estimate"] = LOSS_ESTIMATES
    for command in ("train", "train-diffusion"):
        for option, registry in expected.items():
            assert list(options(parsers[command])[option].choices) == list(registry), (command, option)
    assert list(options(parsers["evaluate"])["--divergence"].choices) == list(DIVERGENCES)
    assert list(options(parsers["demo"])["--objective"].choices) == [m for m in OBJECTIVE_MODES if m != "erm"]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("train", "--objective", "fair"),
        ("train", "--group_sampling", "uniform"),
        ("train", "--group_loss_estimate", "mean"),
        ("train", "--group_reference", "erm"),
        ("train-diffusion", "--objective", "fair"),
        ("train-diffusion", "--group_sampling", "uniform"),
        ("evaluate", "--divergence", "kld"),
        ("demo", "--objective", "erm"),  # the demo's other run is the ERM baseline
    ],
)
def test_an_unknown_choice_is_refused_naming_the_option_and_the_valid_values(parsers, capsys, command, option, value):
    parser = parsers[command]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*required_argv(command), option, value])
    assert exit_info.value.code == 2
    valid = ", ".join(repr(choice) for choice in options(parser)[option].choices)
    pattern = rf"argument {option}(/\S+)?: invalid choice: {value!r} \(choose from {re.escape(valid)}\)"
    assert re.search(pattern, capsys.readouterr().err)


def _deprecated_aliases():
    for old, new in RENAMED_KEYWORDS.items():
        yield pytest.param("GroupObjective", old, new, id=f"GroupObjective-{old}")
    for command, renamed in RENAMED.items():
        for old, new in renamed.items():
            yield pytest.param(command, old, new, id=f"{command}{old}")


def _value_for(action: argparse.Action) -> list[str]:
    """A valid command-line value for ``action`` that differs from its default."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [next(str(choice) for choice in action.choices if choice != action.default)]
    return {int: ["3"], float: ["0.25"]}.get(action.type, ["some-value"])


@pytest.mark.parametrize(("surface", "old", "new"), list(_deprecated_aliases()))
def test_an_old_spelling_works_and_warns(parsers, surface, old, new):
    if surface == "GroupObjective":
        value = KEYWORD_VALUES[old]
        with pytest.warns(FutureWarning, match=rf"GroupObjective: `{old}` is deprecated .*use `{new}`"):
            renamed = GroupObjective(groups=["a", "b"], **{old: value})
        settings = {k: v for k, v in renamed.state_dict().items() if not hasattr(v, "shape")}
        assert settings[new] == value and old not in settings  # the state and the attributes use the new names
        assert getattr(renamed, new) == value
        with pytest.warns(FutureWarning, match=rf"GroupObjective: `\.{old}` is deprecated .*use `\.{new}`"):
            assert getattr(renamed, old) == value
        same = GroupObjective(groups=["a", "b"], **{new: value}).state_dict()
        assert settings == {k: v for k, v in same.items() if not hasattr(v, "shape")}
        with pytest.raises(TypeError, match=rf"pass `{new}` only"):
            GroupObjective(groups=["a", "b"], **{old: value, new: value})
        return
    parser = parsers[surface]
    option, *fixed = new.split(maxsplit=1)  # "--feature_model none": an old flag that meant one value of an option
    value = fixed or _value_for(parser._option_string_actions[option])
    base = required_argv(surface, leave_out=option)  # a required option is given by its old name alone
    with pytest.warns(FutureWarning, match=rf"{re.escape(old)} is deprecated .*use {re.escape(new)} "):
        with_old = parser.parse_args([*base, old, *([] if fixed else value)])
    assert vars(with_old) == vars(parser.parse_args([*base, option, *value]))
    assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", parser.format_help())  # hidden from --help


def test_a_required_option_given_by_its_old_name_counts(parsers, capsys):
    from hf_egt.apps.train_diffusion import parse_args

    with pytest.warns(FutureWarning):
        args = parse_args(["--pretrained_model_name_or_path", "m", "--dataset_name", "d"])
    assert (args.model_name_or_path, args.dataset) == ("m", "d")
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "d"])
    assert "the following arguments are required: --model_name_or_path" in capsys.readouterr().err


def test_egt_options_come_first_in_help(parsers):
    for command in ("train", "train-diffusion"):
        text = parsers[command].format_help()
        assert text.index("--objective") < text.index("--group_step_size") < text.index("--learning_rate"), command
    text = parsers["train"].format_help()
    assert text.index("--lora_r") < text.index("--objective") < text.index("TrainingArguments:")
    assert len(text.split("TrainingArguments:")[0].splitlines()) < 200  # the EGT part is not buried


def test_config_fields_carry_their_choices():
    from dataclasses import fields

    from hf_egt.core.objective import OBJECTIVE_MODES
    from hf_egt.integrations.trainer import EGTConfig

    metadata = {f.name: f.metadata for f in fields(EGTConfig)}
    assert metadata["objective"]["choices"] == list(OBJECTIVE_MODES)
    for name in ("group_sampling", "group_loss_estimate", "group_reference"):
        assert metadata[name]["choices"], name


def test_egt_report_takes_the_generated_side_by_keyword_only():
    """Positional (generated, real) - the `evaluate` order - would swap the two sides of every divergence."""
    import numpy as np

    from hf_egt.core.metrics import egt_report

    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(40, 2)), rng.normal(1.0, 1.0, size=(30, 2))
    real_groups, generated_groups = ["a", "b"] * 20, ["a", "b"] * 15
    with pytest.raises(TypeError, match="positional argument"):
        egt_report(real, real_groups, generated, generated_groups)
    forward = egt_report(
        real, real_groups, generated_features=generated, generated_groups=generated_groups, divergence="kl"
    )
    swapped = egt_report(
        generated, generated_groups, generated_features=real, generated_groups=real_groups, divergence="kl"
    )
    assert forward["per_group"] != pytest.approx(swapped["per_group"])  # KL is not symmetric: the order matters


def test_train_reads_an_old_spelling_into_the_new_field(tmp_path):
    """Through `HfArgumentParser.parse_args_into_dataclasses` (the path `hf-egt train` takes), dashed spelling too."""
    from hf_egt.apps.train import parse_train_arguments

    for spelling in ("--max_per_group", "--max-per-group"):
        with pytest.warns(FutureWarning, match="use --max_train_per_group"):
            script_args, _ = parse_train_arguments(
                ["--model_name_or_path", "m", "--dataset", "d", "--output_dir", str(tmp_path), spelling, "3"]
            )
        assert script_args.max_train_per_group == 3 and not hasattr(script_args, "max_per_group")


# ---------------------------------------------------------------------------------------------------------------------
# Synonyms: one spelling per concept on every surface.
# ---------------------------------------------------------------------------------------------------------------------
# concept -> (its one spelling, spellings banned from every surface, surfaces that must use the spelling). A renamed
# spelling survives only as a hidden, warning alias (argparse), a `renamed_keywords` keyword or a deprecated property:
# none of these is among a surface's names below.
SYNONYMS = {
    "group objective": ("objective", ("mode", "minmax_objective"), ("GroupObjective", "EGTConfig", "train", "demo")),
    "min-max step size": ("group_step_size", ("step_size", "dro_step_size"), ("GroupObjective", "train", "demo")),
    "adjustment C": ("group_adjustment", ("adjustment", "dro_adjustment"), ("GroupObjective", "train-diffusion")),
    "EMA decay": ("group_ema_decay", ("ema_decay",), ("GroupObjective", "EGTConfig", "train-diffusion")),
    "EMA temperature": ("group_temperature", ("temperature", "ema_temperature"), ("GroupObjective", "train")),
    "group losses the update sees": ("group_loss_estimate", ("loss_estimate",), ("GroupObjective", "train")),
    "weight floor": ("group_weight_floor", ("weight_floor",), ("GroupObjective", "EGTConfig", "train-diffusion")),
    "the GroupObjective object": ("group_objective", ("egt_objective",), ("GroupCollator", "TrainResult")),
    "model": ("model_name_or_path", ("pretrained_model_name_or_path", "model_name"), ("train", "evaluate", "demo")),
    "dataset": ("dataset", ("dataset_name", "domain"), ("train", "evaluate", "train-diffusion", "DemoSettings")),
    "training split": ("train_split", ("dataset_split",), ("train", "train-diffusion")),
    "evaluation split": ("eval_split", ("split", "test_split"), ("train", "evaluate")),
    "training rows per group": ("max_train_per_group", ("max_per_group",), ("train", "demo", "DemoSettings")),
    "evaluation rows per group": ("max_eval_per_group", ("max_test_per_group",), ("train", "evaluate", "demo")),
    "held-out share": ("eval_fraction", ("test_fraction",), ("train", "evaluate", "DemoSettings", "split_by_person")),
    "LoRA rank": ("lora_r", ("rank",), ("train", "train-diffusion", "DemoSettings")),
    "training batch": (
        "per_device_train_batch_size",
        ("batch_size", "train_batch_size"),
        ("EGTConfig", "train", "train-diffusion", "demo", "DemoSettings"),
    ),
    "eval batch": ("per_device_eval_batch_size", ("eval_batch_size",), ("train", "evaluate", "DemoSettings")),
    "optimizer steps": ("max_steps", ("max_train_steps",), ("train", "train-diffusion", "demo", "DemoSettings")),
    "checkpoints": ("save_steps", ("checkpointing_steps",), ("train", "train-diffusion")),
    "schedule": ("lr_scheduler_type", ("lr_scheduler",), ("train", "train-diffusion")),
    "warm-up": ("warmup_steps", ("lr_warmup_steps",), ("train", "train-diffusion")),
    "weight decay": ("weight_decay", ("adam_weight_decay",), ("train", "train-diffusion")),
    "EGT divergence": ("divergence", ("egt_divergence", "metric"), ("evaluate", "evaluate module", "DemoSettings")),
    "EGT encoder": (
        "feature_model",
        ("no_egt", "egt", "encoder", "embedding_model"),
        ("evaluate", "demo", "evaluate module", "DemoSettings"),
    ),
    "evaluate the base model too": ("eval_base", ("compare_base",), ("train", "evaluate")),
    "HyperLoRA context size": (
        "hyper_context_size",
        ("hyper_context_rows", "context_rows", "context_examples"),
        ("train", "train-diffusion"),
    ),
    "HyperLoRA context set": (
        "context_set",
        ("set_batch", "set_inputs", "hyper_set", "context_batch"),
        ("fix_context", "FixedContextCallback", "HyperLoRAModel.forward"),
    ),
}


def parameter_names(function) -> set[str]:
    """A function's parameter names (through `renamed_keywords`' wrapper: the current names only)."""
    import inspect

    return set(inspect.signature(function).parameters) - {"self", "args", "kwargs"}


def api_surfaces() -> dict[str, set[str]]:
    """The names a user writes on each Python surface: keywords, attributes, dataclass fields, state keys."""
    from dataclasses import fields

    import torch

    from hf_egt.apps.offline import split_by_person
    from hf_egt.apps.recipe import DemoSettings
    from hf_egt.integrations.diffusion.train import TrainResult
    from hf_egt.integrations.hyper import FixedContextCallback, HyperLoRAModel, fix_context, tokenize_context_set
    from hf_egt.integrations.trainer import EGTConfig
    from hf_egt.integrations.trainer.data_utils import GroupCollator
    from hf_egt.integrations.trainer.sft_config import EGTSFTConfig

    objective = GroupObjective(groups=["a", "b"])
    context = {"input_ids": torch.zeros(1, 2, dtype=torch.long)}
    state = {k for k, v in objective.state_dict().items() if not isinstance(v, torch.Tensor)}
    return {
        "GroupObjective": parameter_names(GroupObjective.__init__) | set(vars(objective)) | state,
        "EGTConfig": {f.name for f in fields(EGTConfig)},
        "EGTSFTConfig": {f.name for f in fields(EGTSFTConfig)},
        "GroupCollator": parameter_names(GroupCollator.__init__) | set(vars(GroupCollator(None, "group", objective))),
        "TrainResult": {f.name for f in fields(TrainResult)},
        "DemoSettings": {f.name for f in fields(DemoSettings)},
        "split_by_person": parameter_names(split_by_person),
        "fix_context": parameter_names(fix_context),
        "tokenize_context_set": parameter_names(tokenize_context_set),
        "FixedContextCallback": parameter_names(FixedContextCallback.__init__)
        | set(vars(FixedContextCallback(context))),
        "HyperLoRAModel.forward": parameter_names(HyperLoRAModel.forward),
    }


def evaluate_module_names() -> set[str]:
    """The keywords of the `evaluate` module metrics/egt (`compute`'s, as its `_compute` receives them)."""

    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(REPO_ROOT / "metrics" / "egt"))
    return parameter_names(type(metric)._compute) - {"reference_samples"} | {"references"}


@pytest.fixture(scope="module")
def surfaces(parsers) -> dict[str, set[str]]:
    """Every surface's names: the Python API, the configs, each command's options (no `--`), the evaluate module."""
    found = api_surfaces()
    found.update({command: {option[2:] for option in options(parser)} for command, parser in parsers.items()})
    found["evaluate module"] = evaluate_module_names()
    return found


def synonyms_in(surfaces: dict[str, set[str]]) -> list[str]:
    """Each banned spelling found on a surface, as ``"surface: spelling (use name)"``."""
    return [
        f"{surface}: {banned} (use {name})"
        for name, synonyms, _ in SYNONYMS.values()
        for banned in synonyms
        for surface, names in surfaces.items()
        if banned in names
    ]


def test_no_surface_uses_a_synonym(surfaces):
    assert synonyms_in(surfaces) == []


@pytest.mark.parametrize("concept", list(SYNONYMS))
def test_each_concept_has_its_spelling_where_it_applies(surfaces, concept):
    name, _, where = SYNONYMS[concept]
    assert [surface for surface in where if name not in surfaces[surface]] == [], concept


def test_the_synonym_check_finds_a_synonym():
    """It can fail: a parser option, a settings field and a keyword spelled the old way are each reported."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size")
    parser.add_argument("--feature_model")

    def evaluate_things(model_name_or_path, set_batch=None):
        pass

    found = synonyms_in(
        {
            "parser": {option[2:] for option in options(parser)},
            "settings": {"test_fraction", "seed"},
            "function": parameter_names(evaluate_things),
        }
    )
    assert found == [
        "settings: test_fraction (use eval_fraction)",
        "parser: batch_size (use per_device_train_batch_size)",
        "function: set_batch (use context_set)",
    ]


def test_every_demo_option_is_the_settings_field_of_its_name(parsers):
    """`hf-egt demo --<name>` overrides `DemoSettings.<name>`: no translation table between the two."""
    from dataclasses import fields

    from hf_egt.apps.recipe import DemoSettings

    own = {"--output_dir", "--quick", "--model_name_or_path"}  # the command's own, not settings
    demo_options = {option[2:] for option in options(parsers["demo"])} - {o[2:] for o in own}
    assert demo_options <= {field.name for field in fields(DemoSettings)}
