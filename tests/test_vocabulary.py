"""One vocabulary: every command's options, read from its parser, give each shared concept one name and one default;
the old spellings still work (with a ``FutureWarning``); enumerations reject unknown values with the valid ones."""

from __future__ import annotations

import argparse
import re

import pytest

from hf_egt.apps.cli import DEMO_COMMAND_RENAMED_OPTIONS, EVALUATE_RENAMED_OPTIONS, TRAIN_RENAMED_OPTIONS
from hf_egt.core.objective import RENAMED_KEYWORDS, GroupObjective
from hf_egt.core.vocabulary import renamed_options_of
from hf_egt.integrations.diffusion.train import RENAMED_OPTIONS as DIFFUSION_RENAMED_OPTIONS

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
    from hf_egt.integrations.diffusion.train import parse_args

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
    from hf_egt.apps.cli import parse_train_arguments

    for spelling in ("--max_per_group", "--max-per-group"):
        with pytest.warns(FutureWarning, match="use --max_train_per_group"):
            script_args, _ = parse_train_arguments(
                ["--model_name_or_path", "m", "--dataset", "d", "--output_dir", str(tmp_path), spelling, "3"]
            )
        assert script_args.max_train_per_group == 3 and not hasattr(script_args, "max_per_group")
