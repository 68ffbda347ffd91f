"""Checks on `EGTTrainer` checkpoints that run before any model loads (resume)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_egt.core.resume import write_run_record
from hf_egt.core.vocabulary import objective_state_path

logger = logging.getLogger(__name__)


def check_checkpoint(checkpoint: str, groups: Sequence[str | int] | None = None, objective: str | None = None) -> None:
    """Raise a clear error unless `checkpoint` is a complete, readable `EGTTrainer` checkpoint for these groups.

    Checked without loading a model: the folder, its `trainer_state.json`, the headers of its safetensors files, the
    `torch.save` archives of the optimizer, scheduler, RNG and scaler states (complete and matching their checksums;
    nothing is unpickled) and the group objective's state (groups and mode). A `FileNotFoundError` or `ValueError`
    names the file at fault.
    """
    import json

    from safetensors import safe_open

    from hf_egt.core.serialization import METADATA_KEY, check_checkpoint_files

    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"`resume_from_checkpoint`: {checkpoint} is not a folder.")
    state_path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"`resume_from_checkpoint`: {checkpoint} has no {state_path}; it is not a checkpoint.")
    try:
        with open(state_path, encoding="utf-8") as handle:
            json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`resume_from_checkpoint`: {state_path} is not valid JSON ({error}).") from error
    objective_path = objective_state_path(checkpoint)  # older checkpoints: egt_objective.safetensors (warns)
    if not os.path.isfile(objective_path):
        raise FileNotFoundError(
            f"`resume_from_checkpoint`: {checkpoint} has no group objective state {objective_path}."
        )
    check_checkpoint_files(checkpoint)
    with safe_open(objective_path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    try:
        settings = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"`resume_from_checkpoint`: {objective_path} was not written by hf_egt ({error}).") from error
    saved = settings.get("groups")
    if groups is not None and saved != list(groups):
        raise ValueError(
            f"`resume_from_checkpoint`: {objective_path} was saved for groups {saved}, but this run has groups "
            f"{list(groups)}; resume with the same data and `groups`."
        )
    saved_mode = settings.get("objective", settings.get("mode"))  # "mode": states saved before the rename
    if objective is not None and saved_mode != objective:
        raise ValueError(
            f"`resume_from_checkpoint`: {objective_path} was saved with objective {saved_mode!r}, but this run has "
            f"objective {objective!r}."
        )


def last_checkpoint(output_dir: str) -> str:
    """The newest `checkpoint-<step>` folder of `output_dir`, or a `FileNotFoundError` naming the folder."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if found is None:
        raise FileNotFoundError(
            f"`resume_from_checkpoint`: no `checkpoint-<step>` folder in the output directory {output_dir}."
        )
    return found


class RunRecordCallback(TrainerCallback):
    """Writes a run's compatibility record (`hf_egt.core.resume`) into every checkpoint folder `Trainer` saves, so
    that a resume can be checked against it before any model loads."""

    def __init__(self, record: Mapping):
        self.record = dict(record)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                write_run_record(self.record, folder)
