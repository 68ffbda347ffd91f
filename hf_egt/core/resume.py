"""The compatibility record of a training run: what a resumed run must share with the run that saved the checkpoint.

``hf-egt train`` and ``hf-egt train-diffusion`` write the record (``RUN_RECORD_NAME``, JSON) into every checkpoint
folder, and, on ``--resume_from_checkpoint``, compare it with the new run's before any model is loaded: the data set
(its name and a content hash of the training rows), the groups, the LoRA / HyperLoRA shape and the objective settings.
A difference is one ``ValueError`` line naming the option and both values. Differences a user may mean (other data,
another step size) are accepted when the option is listed in ``--resume_allow_changes``; differences that cannot be
resumed (another LoRA rank: the saved weights do not fit) are not.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf_egt.core.samplers import DEFAULT_EXPONENTS

logger = logging.getLogger(__name__)

RUN_RECORD_NAME = "hf_egt_run.json"
ALLOW_CHANGES_OPTION = "--resume_allow_changes"
# The group-objective options that `hf-egt train` and `train-diffusion` share: record key -> (option, may change on
# request). A resume may change each of them when asked; the objective itself is recorded by each command.
GROUP_OBJECTIVE_RECORD_FIELDS = {
    name: (f"--{name}", True)
    for name in (
        "group_step_size",
        "group_adjustment",
        "group_ema_decay",
        "group_temperature",
        "group_sampling",
        "group_sampling_exponent",
        "group_loss_estimate",
        "group_weight_floor",
    )
}
# Record entries that only matter under some settings of the run: compared only when the saved run or this one uses
# them (a sampling exponent under natural sampling changes nothing, and earlier versions recorded one for every run).
RECORD_CONDITIONS = {"group_sampling_exponent": lambda record: record.get("group_sampling") in DEFAULT_EXPONENTS}


def recorded_sampling_exponent(sampling: str, exponent: float | None) -> float | None:
    """The ``group_sampling_exponent`` a run's record holds: the alpha its sampling uses (``None`` resolved to the
    sampling's default), ``None`` for a sampling that uses none."""
    if sampling not in DEFAULT_EXPONENTS:
        return None
    return DEFAULT_EXPONENTS[sampling] if exponent is None else exponent


@dataclass(frozen=True)
class RecordField:
    """One entry of the record: the option that sets it and whether a resume may change it on request."""

    option: str
    may_change: bool


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_of(output_dir: str | os.PathLike) -> list[str]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, oldest (smallest step) first; empty for a new folder."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name)]
    return [str(path) for path in sorted(found, key=lambda path: int(path.name.split("-")[1]))]


def write_run_record(record: Mapping, folder: str | os.PathLike) -> str:
    """Write ``record`` as ``folder/RUN_RECORD_NAME`` (the folder is created) and return the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, RUN_RECORD_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(dict(record), handle, indent=2, sort_keys=True)
    return path


def read_run_record(folder: str | os.PathLike, argument: str = "--resume_from_checkpoint") -> dict | None:
    """The record of a checkpoint folder, or ``None`` when it has none (checkpoints written before the record)."""
    path = os.path.join(folder, RUN_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`{argument}`: {path} is not valid JSON ({error}).") from error


def check_run_record(
    checkpoint: str | os.PathLike,
    record: Mapping,
    fields: Mapping[str, RecordField],
    allow_changes: Sequence[str] = (),
    argument: str = "--resume_from_checkpoint",
) -> list[str]:
    """Compare the record saved in ``checkpoint`` with this run's ``record``, key by key over ``fields``.

    Returns the differences accepted through ``allow_changes`` (option names without dashes), as sentences for the
    log and the report; any other difference is a ``ValueError`` naming the option and both values. An option listed
    in ``allow_changes`` that cannot change (``RecordField.may_change`` false) or is not in ``fields`` is a
    ``ValueError`` too. A checkpoint without a record (written by an earlier version) is accepted with a warning.
    """
    may_change = sorted({f.option.lstrip("-") for f in fields.values() if f.may_change})
    for name in allow_changes:
        if name.lstrip("-") not in may_change:
            raise ValueError(
                f"`{ALLOW_CHANGES_OPTION}`: {name!r} is not an option a resume may change; valid: {may_change}."
            )
    allowed = {name.lstrip("-") for name in allow_changes}
    saved = read_run_record(checkpoint, argument)
    if saved is None:
        logger.warning(
            "%s has no %s (saved by an earlier version): its data, groups, LoRA shape and objective settings are not "
            "checked against this run.",
            checkpoint,
            RUN_RECORD_NAME,
        )
        return []
    accepted = []
    for key, spec in fields.items():
        if key not in saved or _same(saved[key], record.get(key)):
            continue
        if key in RECORD_CONDITIONS and not (RECORD_CONDITIONS[key](saved) or RECORD_CONDITIONS[key](record)):
            continue
        option = spec.option.lstrip("-")
        sentence = f"{checkpoint} was saved with {_shown(saved[key])}, this run has {_shown(record.get(key))}"
        if spec.may_change and option in allowed:
            accepted.append(f"`--{option}` changed on resume: {sentence}")
            continue
        hint = "resume with the saved value, or start a new run in another `--output_dir`"
        if spec.may_change:
            hint += f", or pass `{ALLOW_CHANGES_OPTION} {option}` to continue the run with the new value"
        raise ValueError(f"`--{option}`: {sentence}; {hint}.")
    for sentence in accepted:
        logger.warning("%s.", sentence)
    return accepted


def resolved_model_path(model_name_or_path: str) -> str:
    """An existing local folder or file as an absolute path (what a record, an adapter's ``base_model_name_or_path``
    and a card's snippets must hold to work from another folder); a Hub id as it is."""
    path = Path(model_name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else model_name_or_path


def dataset_entry(name: str, sha256: str) -> dict:
    """The record's data set entry: its name and the content hash of its training rows (only the hash is compared:
    the same rows under another path are the same data)."""
    return {"name": name, "sha256": sha256}


def _same(saved, current) -> bool:
    if isinstance(saved, Mapping) and isinstance(current, Mapping) and "sha256" in saved and "sha256" in current:
        return saved["sha256"] == current["sha256"]
    return saved == current


def _shown(value) -> str:
    """A record value for a message: a content hash is shortened."""
    if isinstance(value, Mapping) and set(value) == {"name", "sha256"}:
        return f"{value['name']!r} (training rows sha256 {str(value['sha256'])[:12]})"
    return repr(value)
