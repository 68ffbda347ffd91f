"""One name per concept: the deprecation of renamed keywords, attributes and state keys, and the objective's state file.

Every surface (``GroupObjective``, ``EGTConfig``, ``hf-egt train`` / ``evaluate`` / ``train-diffusion`` / ``demo``)
uses the same name for a concept (docs/trainer.md, "One vocabulary"). A renamed keyword, attribute or state key keeps
working for one release: :func:`renamed_keywords` (functions), :func:`renamed_attribute` (properties) and
:func:`renamed_state_keys` (saved states) accept the old spelling with the one ``FutureWarning`` of
:func:`warn_renamed`, naming the new one; the commands' renamed options (``hf_egt.apps.arguments``) use the same
warning. Pure Python: imports nothing of the package.
"""

from __future__ import annotations

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
