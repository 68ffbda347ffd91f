"""Collators and dataset helpers of the EGT trainers: padding, group ids in the batch, tokenisation, group labels."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hf_egt.core.objective import GroupObjective
from hf_egt.core.vocabulary import renamed_attribute, renamed_keywords

logger = logging.getLogger(__name__)


@dataclass
class DataCollatorForCausalLM:
    """Right-pads `input_ids` (with `pad_token_id`), `attention_mask` (0) and `labels` (-100; default `input_ids`).

    Unlike `DataCollatorForLanguageModeling(mlm=False)`, it keeps labels a dataset already has and never masks a real
    token that happens to equal the pad token (e.g. EOS used as pad).
    """

    pad_token_id: int = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)

        def padded(key: str, default: Callable[[dict], Sequence[int]], value: int) -> torch.Tensor:
            rows = [list(f[key]) if key in f else list(default(f)) for f in features]
            return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)

        return {
            "input_ids": padded("input_ids", lambda f: f["input_ids"], self.pad_token_id),
            "attention_mask": padded("attention_mask", lambda f: [1] * len(f["input_ids"]), 0),
            "labels": padded("labels", lambda f: f["input_ids"], -100),
        }


class GroupCollator:
    """Wraps a collator: takes the group labels out of the features, encodes them to ids with the objective's
    `GroupLabels` and adds them to the batch as a `LongTensor` under the same key (the inner collator never sees them).
    With `reference_column`, that column's per-example reference losses travel the same way (a float tensor), when
    the features hold it.
    """

    objective = renamed_attribute("objective", "group_objective", "GroupCollator")

    @renamed_keywords({"objective": "group_objective"})
    def __init__(
        self,
        collator: Callable,
        group_column: str,
        group_objective: GroupObjective,
        reference_column: str | None = None,
    ):
        self.collator = collator
        self.group_column = group_column
        self.group_objective = group_objective
        self.reference_column = reference_column

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        missing = [i for i, f in enumerate(features) if self.group_column not in f]
        if missing:
            raise ValueError(
                f"Example {missing[0]} of the batch has no group column {self.group_column!r}; it has "
                f"{sorted(features[missing[0]])}. Set `group_column` to the column holding the group labels."
            )
        labels = [f[self.group_column] for f in features]
        taken = (self.group_column, self.reference_column)
        batch = self.collator([{k: v for k, v in f.items() if k not in taken} for f in features])
        batch[self.group_column] = self.group_objective.encode(labels)
        if self.reference_column is not None and all(self.reference_column in f for f in features):
            batch[self.reference_column] = torch.tensor([float(f[self.reference_column]) for f in features])
        return batch


def dataset_group_labels(dataset, group_column: str, name: str) -> list | None:
    """All group labels of a map-style dataset (`None` for an iterable one); a clear error if the column is missing."""
    if dataset is None or not hasattr(dataset, "__len__"):
        return None  # an iterable dataset: labels are checked batch by batch
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list):
        if group_column not in columns:
            raise ValueError(
                f"The {name} dataset has no group column {group_column!r}; its columns are {columns}. Set "
                "`group_column` in the config to the column holding the group labels."
            )
        return list(dataset[group_column])
    if not hasattr(dataset, "__getitem__"):
        return None
    labels = []
    for index in range(len(dataset)):
        row = dataset[index]
        if group_column not in row:
            raise ValueError(
                f"Row {index} of the {name} dataset has no group column {group_column!r}; it has {sorted(row)}. "
                "Set `group_column` in the config to the column holding the group labels."
            )
        labels.append(row[group_column])
    return labels


def resolve_groups(
    groups: Sequence[str | int] | None, train_labels: list | None, eval_labels: dict[str, list | None]
) -> list[str | int]:
    """The group order (`groups` if given, else the sorted unique training labels), checked against the data."""
    if train_labels is None and groups is None:
        raise ValueError("The training dataset is iterable: pass the group labels explicitly with `groups`.")
    for name, labels in {"train": train_labels, **eval_labels}.items():
        missing = [index for index, label in enumerate(labels or ()) if label is None]
        if missing:
            raise ValueError(
                f"The {name} dataset has {len(missing)} row(s) without a group label (None), e.g. rows {missing[:10]}; "
                "give every row a group or leave those rows out."
            )
    seen = set(train_labels) if train_labels is not None else None
    if groups is None:
        groups = sorted(seen)
    groups = list(groups)
    if seen is not None:
        unknown = sorted(seen - set(groups), key=str)
        if unknown:
            raise ValueError(f"The train dataset has group label(s) {unknown} not in `groups`={groups}.")
        empty = [group for group in groups if group not in seen]
        if empty:
            raise ValueError(
                f"Group(s) {empty} of `groups`={groups} have no row in the train dataset; an empty group has no "
                "loss to weight. Remove them from `groups` or add rows for them."
            )
    for name, labels in eval_labels.items():
        unseen = sorted(set(labels or ()) - set(groups), key=str)
        if unseen:
            raise ValueError(
                f"The {name} dataset has group label(s) {unseen} unseen at train time; the train groups are {groups}."
            )
    return groups


def tokenize_text_dataset(dataset, tokenizer, text_column: str, max_length: int | None, name: str):
    """Tokenize `text_column` of a `datasets.Dataset` that has no `input_ids` (other columns are kept)."""
    columns = getattr(dataset, "column_names", None)
    if dataset is None or not isinstance(columns, list) or "input_ids" in columns:
        return dataset
    if text_column not in columns:
        raise ValueError(
            f"The {name} dataset has neither `input_ids` nor the text column {text_column!r}; its columns are "
            f"{columns}. Set `text_column` or pass a tokenized dataset."
        )
    if tokenizer is None:
        raise ValueError(f"The {name} dataset holds raw text: pass a tokenizer as `processing_class` to tokenize it.")

    def tokenize(batch):
        return tokenizer(batch[text_column], truncation=max_length is not None, max_length=max_length)

    return dataset.map(tokenize, batched=True, remove_columns=[text_column], desc=f"Tokenizing {name} dataset")


def pad_token_id_of(tokenizer) -> int:
    """The tokenizer's pad token id, else its EOS id, else 0 (padding positions are masked out anyway)."""
    if tokenizer is None:
        return 0
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
