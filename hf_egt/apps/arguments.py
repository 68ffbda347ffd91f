"""Command-line arguments of the ``hf-egt`` commands: the argparse helpers every command shares.

- renamed options: :func:`add_renamed_options` accepts an old spelling as a hidden alias of the new option, with the
  one deprecation warning of ``hf_egt.core.vocabulary`` (docs/trainer.md, "One vocabulary");
- :func:`add_dashed_aliases` (``--max-eval-per-group``), :class:`DefaultsHelpFormatter` (defaults in ``--help``);
- :func:`add_config_arguments`: options declared from ``HyperLoRAConfig``'s own fields;
- :func:`redacted_command`: the command line with secret values hidden, for reports and cards.

Only ``hf_egt.apps`` parses command lines: the library (``hf_egt.core``, ``hf_egt.integrations``) imports no argparse.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields

from hf_egt.core.vocabulary import warn_renamed

# Option values read as yes / no (`--resume_from_checkpoint true`, `HF_EGT_DEBUG=1`).
TRUE_STRINGS, FALSE_STRINGS = ("true", "yes", "1", "latest"), ("false", "no", "0", "")
# Options whose value is a secret, in every spelling argparse accepts (HfArgumentParser adds the dashed alias).
SECRET_OPTIONS = ("--hub_token", "--hub-token", "--token")
_ARGUMENT_TYPES = {"int": int, "float": float, "str": str}


class _RenamedOption(argparse.Action):
    """A hidden option that warns, then acts as the option it was renamed to (with ``fixed`` as its value, for an old
    flag that meant one value of the new option: ``--no_egt`` is ``--feature_model none``)."""

    def __init__(self, option_strings, dest, target: argparse.Action, where: str, fixed: str | None = None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.target, self.where, self.fixed = target, where, fixed

    @property
    def new_spelling(self) -> str:
        """The spelling that replaces this one: the new option, and its value for an old flag."""
        option = self.target.option_strings[0]
        return option if self.fixed is None else f"{option} {self.fixed}"

    def __call__(self, parser, namespace, values, option_string=None):
        warn_renamed(option_string, self.new_spelling, self.where)
        if self.fixed is not None:
            values = self.target.type(self.fixed) if self.target.type else self.fixed
        self.target(parser, namespace, values, self.target.option_strings[0])


def add_dashed_aliases(parser: argparse.ArgumentParser) -> None:
    """Accept ``--name-with-dashes`` for every ``--name_with_underscores`` option of ``parser``, as
    ``transformers.HfArgumentParser`` does for ``hf-egt train``: one spelling rule on every command. Call it before
    ``add_renamed_options`` (which then accepts the old names' dashed spellings too)."""
    for action in list(parser._actions):
        for option in list(action.option_strings):
            dashed = "--" + option[2:].replace("_", "-")
            if option.startswith("--") and "_" in option and dashed not in parser._option_string_actions:
                action.option_strings.append(dashed)
                parser._option_string_actions[dashed] = action


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default after its text, unless the text already gives one or there is none
    to show (``None``, ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "(default" in text
        ):
            return text
        return f"{text} (default: %(default)s)".strip()


def add_renamed_options(parser: argparse.ArgumentParser, renamed: Mapping[str, str], where: str | None = None) -> None:
    """Accept each old option of ``renamed`` (``{"--old": "--new"}``) as a hidden alias of the new one: same type,
    choices and number of values, a ``FutureWarning`` when used, absent from ``--help``. An old flag that meant one
    value of the new option is mapped to both (``{"--no_egt": "--feature_model none"}``): it takes no value.

    A required new option is checked by :func:`check_required_options` after parsing instead (argparse would not
    count the alias as giving it).
    """
    where = where or parser.prog
    dashed = {}  # HfArgumentParser also accepts `--new-name`: the old name's dashed spelling stays accepted too
    for old, new in renamed.items():
        if "_" in old and new.split()[0].replace("_", "-") in parser._option_string_actions:
            dashed[old.replace("_", "-")] = new
    for old, new in {**renamed, **dashed}.items():
        option, *value = new.split(maxsplit=1)
        target = parser._option_string_actions[option]
        if target.required:
            target.required = False
            parser.__dict__.setdefault("_renamed_required", []).append(target)
        shape = {"nargs": 0} if value else {"nargs": target.nargs, "const": target.const, "type": target.type}
        parser.add_argument(
            old,
            action=_RenamedOption,
            dest=target.dest,
            target=target,
            where=where,
            fixed=value[0] if value else None,
            **shape,
            choices=None if value else target.choices,
            metavar=target.metavar,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def check_required_options(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    """argparse's "required" error for the required options :func:`add_renamed_options` had to relax."""
    relaxed = parser.__dict__.get("_renamed_required", ())
    missing = [action.option_strings[0] for action in relaxed if getattr(namespace, action.dest, None) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def renamed_options_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{"--old": "--new"}`` of every renamed option of ``parser`` (``"--new value"`` for an old flag that meant one
    value of the new option), for tests and docs."""
    return {
        option: action.new_spelling
        for action in parser._actions
        if isinstance(action, _RenamedOption)
        for option in action.option_strings
    }


def add_config_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Declare `--<option_name(field)>` for each `HyperLoRAConfig` field in `names` on `parser` (or an argument
    group), with the field's type, default, help and choices: one declaration of each option, the config's."""
    from hf_egt.integrations.hyper.config import HyperLoRAConfig, option_name

    by_name = {f.name: f for f in fields(HyperLoRAConfig)}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"{unknown} are not `HyperLoRAConfig` fields; its fields are {sorted(by_name)}.")
    for name in names:
        spec = by_name[name]
        default = spec.default if spec.default is not MISSING else None
        kwargs = {"default": default, "help": spec.metadata["help"], "dest": option_name(name)}
        if "choices" in spec.metadata:
            kwargs["choices"] = spec.metadata["choices"]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:  # the annotation's first type: "int | None" -> int
            kwargs["type"] = _ARGUMENT_TYPES[str(spec.type).split("|")[0].strip()]
        parser.add_argument(f"--{option_name(name)}", **kwargs)


def is_secret_option(option: str) -> bool:
    """Whether ``option`` (``--hub_token``, ``--hub-token``, ``--token``, or an abbreviation of one) names a secret."""
    if not option.startswith("--") or len(option) < 4:
        return False
    normalized = option.replace("-", "_")
    return any(secret.replace("-", "_").startswith(normalized) for secret in SECRET_OPTIONS)


def redacted_command(program: str, argv: Sequence[str]) -> str:
    """The command line as a shell string, with the values of secret options (``--hub_token``) replaced."""
    shown, hide_next = [], False
    for arg in argv:
        if hide_next:
            shown.append("<redacted>")
            hide_next = False
        elif is_secret_option(arg):
            shown.append(arg)
            hide_next = True
        elif "=" in arg and is_secret_option(arg.split("=", 1)[0]):
            shown.append(arg.split("=", 1)[0] + "=<redacted>")
        else:
            shown.append(arg)
    return f"{program} {shlex.join(shown)}".strip()
