"""One name per concept: the deprecation of renamed keywords and command-line options, and the objective's state file.

Every surface (``GroupObjective``, ``EGTConfig``, ``hf-egt train`` / ``evaluate`` / ``train-diffusion`` / ``demo``)
uses the same name for a concept (docs/trainer.md, "One vocabulary"). A renamed keyword or option keeps working for
one release: :func:`renamed_keywords` (functions) and :func:`add_renamed_options` (argparse parsers) accept the old
spelling with a ``FutureWarning`` naming the new one. Pure Python: imports nothing of the package.
"""

from __future__ import annotations

import argparse
import functools
import os
import warnings
from collections.abc import Callable, Mapping

REMOVAL_VERSION = "0.2.0"  # the release that drops the old spellings

OBJECTIVE_STATE_NAME = "group_objective.safetensors"
# The names the objective state had in earlier versions (EGTTrainer's): still read on resume (with a warning), never
# written.
LEGACY_OBJECTIVE_STATE_NAMES = ("egt_objective.safetensors",)


def warn_renamed(old: str, new: str, where: str) -> None:
    """The one deprecation warning: ``where``'s ``old`` is now ``new``."""
    warnings.warn(
        f"{where}: {old} is deprecated and will be removed in hf-egt {REMOVAL_VERSION}; use {new} (same meaning).",
        FutureWarning,
        stacklevel=3,
    )


def renamed_keywords(renamed: Mapping[str, str], where: str | None = None) -> Callable:
    """Decorator: ``renamed`` maps old keyword names to new ones; a call with an old name warns and passes the value
    under the new name. Passing both spellings of one keyword is a ``TypeError``."""

    def decorate(function: Callable) -> Callable:
        owner = where or function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}: pass `{new}` only (`{old}` is its deprecated name), not both.")
                    warn_renamed(f"`{old}`", f"`{new}`", owner)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


def renamed_attribute(old: str, new: str, where: str) -> property:
    """A property ``old`` that reads and writes the attribute ``new``, with the one deprecation warning."""

    def get(self):
        warn_renamed(f"`.{old}`", f"`.{new}`", where)
        return getattr(self, new)

    def set(self, value):
        warn_renamed(f"`.{old}`", f"`.{new}`", where)
        setattr(self, new, value)

    return property(get, set, doc=f"Deprecated alias of ``{new}`` (removed in hf-egt {REMOVAL_VERSION}).")


def renamed_state_keys(state: Mapping, renamed: Mapping[str, str], where: str) -> dict:
    """``state`` with each old key of ``renamed`` (``{"old": "new"}``) under its new name: a state saved before the
    rename still loads, with one deprecation warning naming the old keys. A state holding both spellings of a key keeps
    the new one."""
    old = [key for key in renamed if key in state]
    if not old:
        return dict(state)
    warn_renamed(
        "the state key(s) " + ", ".join(repr(key) for key in old),
        ", ".join(repr(renamed[key]) for key in old),
        where,
    )
    upgraded = {key: value for key, value in state.items() if key not in renamed}
    for key in old:
        upgraded.setdefault(renamed[key], state[key])
    return upgraded


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


def objective_state_path(folder: str | os.PathLike, argument: str = "resume_from_checkpoint", warn: bool = True) -> str:
    """The group objective's state file in a checkpoint or output ``folder``: ``group_objective.safetensors``, else a
    legacy name (with a ``FutureWarning`` unless ``warn=False``), else the expected path (for the caller's "missing"
    error)."""
    path = os.path.join(folder, OBJECTIVE_STATE_NAME)
    if os.path.isfile(path):
        return path
    for legacy in LEGACY_OBJECTIVE_STATE_NAMES:
        legacy_path = os.path.join(folder, legacy)
        if os.path.isfile(legacy_path):
            if warn:
                warn_renamed(f"the state file name {legacy!r}", repr(OBJECTIVE_STATE_NAME), f"`{argument}` {folder}")
            return legacy_path
    return path
