"""Resolve the ``--dataset`` argument into train / eval splits of grouped text, with clear errors on bad input.

A dataset is one of:

- an offline built-in, ``bold-<domain>`` (BOLD Wikipedia sentences, e.g. ``bold-race``, ``bold-gender``), split by
  person so that no biography has sentences on both sides, or ``bible-<language>-...`` (the parallel Bible, languages
  as groups, e.g. ``bible-en-fr-es-de``; ``hf_egt.apps.bible``), split by verse id once for all languages;
- a local ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` file (or a folder that ``datasets`` can read);
- a Hub dataset id.

Every error names the argument at fault and lists what would be valid, and is raised before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_egt.apps.bible import BIBLE_PREFIX, load_bible_splits, parse_bible_name
from hf_egt.apps.offline import BOLD_DOMAINS, load_bold_records, split_by_person
from hf_egt.core.groups import label_counts
from hf_egt.core.vocabulary import renamed_keywords

logger = logging.getLogger(__name__)

BUILTIN_DATASETS = (*(f"bold-{domain}" for domain in BOLD_DOMAINS), f"{BIBLE_PREFIX}-<language>-...")
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
EVAL_SPLIT_NAMES = ("test", "validation", "eval")
SPLIT_RECORD_NAME = "split.json"


def check_columns(dataset, columns: dict[str, str], dataset_name: str) -> None:
    """Raise a ``ValueError`` naming the argument whose column is missing, and listing the dataset's columns.

    Args:
        dataset: a ``datasets.Dataset``.
        columns: argument name -> column name (e.g. ``{"text_column": "text"}``).
        dataset_name: shown in the message.
    """
    available = list(dataset.column_names)
    for argument, column in columns.items():
        if column not in available:
            raise ValueError(
                f"`--{argument}`: column {column!r} is not in dataset {dataset_name!r}; valid columns are {available}."
            )


def group_counts(dataset, group_column: str) -> dict[str, int]:
    """Rows per group (labels as strings), in sorted order (`hf_egt.core.groups.label_counts`)."""
    return label_counts(dataset[group_column])


def check_groups(dataset, group_column: str, groups: Sequence[str], split: str) -> None:
    """Raise a ``ValueError`` when a requested group has no row in ``split``, listing the groups that do."""
    counts = group_counts(dataset, group_column)
    empty = [group for group in groups if counts.get(group, 0) == 0]
    if empty:
        raise ValueError(
            f"Group(s) {empty} have no rows in the {split} split (column {group_column!r}); groups with rows: {counts}."
        )


def subsample_per_group(dataset, group_column: str, max_per_group: int | None, seed: int = 0):
    """Keep at most ``max_per_group`` rows of each group, drawn at random with ``seed`` (order preserved)."""
    if max_per_group is None:
        return dataset
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(dataset[group_column]):
        by_group.setdefault(str(group), []).append(index)
    keep = sorted(
        index
        for indices in by_group.values()
        for index in (rng.sample(indices, max_per_group) if len(indices) > max_per_group else indices)
    )
    return dataset.select(keep)


def split_per_group(dataset, group_column: str, eval_fraction: float, seed: int = 0):
    """Split rows into (train, eval) with ``eval_fraction`` of every group on the eval side, at least one row each."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"`eval_fraction` must be in (0, 1), got {eval_fraction}.")
    rng = random.Random(seed)
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(dataset[group_column]):
        by_group.setdefault(str(group), []).append(index)
    eval_indices: set[int] = set()
    for indices in by_group.values():
        shuffled = indices[:]
        rng.shuffle(shuffled)
        # at least one row on each side (a group of one row cannot be split: ``load_grouped_splits`` says so first)
        eval_indices.update(shuffled[: min(max(1, round(eval_fraction * len(indices))), max(1, len(indices) - 1))])
    train = [i for i in range(len(dataset)) if i not in eval_indices]
    return dataset.select(train), dataset.select(sorted(eval_indices))


def is_builtin(name: str) -> bool:
    """Whether ``--dataset`` names an offline built-in (``bold-<domain>`` or ``bible[-<language>...]``)."""
    return name.startswith("bold-") or name == BIBLE_PREFIX or name.startswith(f"{BIBLE_PREFIX}-")


def _load_builtin(name: str, seed: int, eval_fraction: float):
    from datasets import Dataset

    if not name.startswith("bold-"):  # the Bible: its own train / validation / test split of verse ids
        splits = load_bible_splits(parse_bible_name(name), seed=seed)
        return {split: Dataset.from_list(rows) for split, rows in splits.items()}
    domain = name.removeprefix("bold-")
    if domain not in BOLD_DOMAINS:
        raise ValueError(f"Unknown built-in dataset {name!r}; valid built-ins are {list(BUILTIN_DATASETS)}.")
    train, test = split_by_person(load_bold_records(domain), eval_fraction=eval_fraction, seed=seed)
    return {"train": Dataset.from_list(train), "test": Dataset.from_list(test)}


def _is_blank(path: Path) -> bool:
    """Whether the file at ``path`` holds nothing but whitespace (read until its first other byte)."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _load_external(name: str, config: str | None, token: str | None):
    from datasets import load_dataset

    path = Path(name)
    if path.is_file():
        if path.suffix not in LOCAL_FORMATS:
            raise ValueError(
                f"`--dataset`: unsupported file type {path.suffix!r} for {name!r}; "
                f"valid local formats are {sorted(LOCAL_FORMATS)}."
            )
        if _is_blank(path):  # `datasets` fails on an empty file with a bare StopIteration
            raise ValueError(f"`--dataset`: {name!r} is empty; pass a {path.suffix} file with one row per example.")
        try:
            return load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path))
        except Exception as err:  # noqa: BLE001 - e.g. a header-only csv: "Instruction 'train' corresponds to no data"
            raise ValueError(
                f"`--dataset`: cannot read {name!r} as {LOCAL_FORMATS[path.suffix]} (no rows, or malformed): "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
            ) from err
    if path.is_dir():
        return load_dataset(str(path), config)
    try:
        return load_dataset(name, config, token=token)
    except Exception as err:  # noqa: BLE001 - re-raised with what would be valid
        raise ValueError(
            f"`--dataset`: unknown dataset {name!r}: not a built-in ({list(BUILTIN_DATASETS)}), not a local file "
            f"({sorted(LOCAL_FORMATS)}) or folder, and loading it from the Hub failed: {err}"
        ) from err


def check_rows(dataset, text_column: str, group_column: str, split: str) -> list[int]:
    """Indices of rows that cannot be used: a missing (``None``) group label, or an empty or missing text.

    A text that is neither a string nor ``None`` (numbers, lists) is a ``ValueError`` naming the column and the type:
    it points at a wrong ``--text_column`` rather than at a few bad rows.
    """
    bad = []
    for index, (text, group) in enumerate(zip(dataset[text_column], dataset[group_column])):
        if text is not None and not isinstance(text, str):
            raise ValueError(
                f"`--text_column`: column {text_column!r} of the {split} split holds {type(text).__name__} values "
                f"(row {index}: {text!r}); it must hold text (strings)."
            )
        if group is None or (isinstance(group, str) and not group.strip()) or text is None or not text.strip():
            bad.append(index)
    return bad


def row_hashes(texts: Sequence[str], groups: Sequence) -> list[str]:
    """A short content id of each (group, text) row: what ``split.json`` records of the eval rows."""
    return [hashlib.sha256(f"{group}\x00{text}".encode()).hexdigest()[:16] for text, group in zip(texts, groups)]


@dataclass
class GroupedSplits:
    """What ``load_grouped_splits`` returns: the two splits, the groups kept, what was left out and why, and the
    record of the split (``split``, written to ``split.json`` beside a trained adapter)."""

    train: object
    evaluation: object
    groups: list[str]
    dropped: list[str] = field(default_factory=list)
    split: dict = field(default_factory=dict)


@renamed_keywords({"max_per_group": "max_train_per_group"})
def load_grouped_splits(
    name: str,
    *,
    text_column: str = "text",
    group_column: str = "group",
    groups: Sequence[str] | None = None,
    max_train_per_group: int | None = None,
    max_eval_per_group: int | None = None,
    eval_fraction: float = 0.2,
    train_split: str = "train",
    eval_split: str | None = None,
    config: str | None = None,
    token: str | None = None,
    seed: int = 0,
    skip_unusable_groups: bool = False,
) -> GroupedSplits:
    """Train and eval ``datasets.Dataset``s of grouped text, validated, with what was left out and the split's record.

    A row without a group label or without text, a group with too few rows to be split into train and eval, a group
    present in only one of the two splits: each is a ``ValueError`` naming the rows or groups, or, with
    ``skip_unusable_groups``, left out with a warning and listed in ``dropped`` (for the report and the card).

    Args:
        name: a built-in (``bold-race``..., ``bible-en-fr-es-de``...), a local file or folder, or a Hub dataset id.
        text_column: the column of the text to model.
        group_column: the column of the sensitive group of each row (labels are turned into strings).
        groups: the groups to train and evaluate (all by default); each must have rows in both splits. A group of
            the data that is not listed is a ``ValueError`` naming it and its rows, or, with
            ``skip_unusable_groups``, left out with a warning and recorded in ``dropped``.
        max_train_per_group: keep at most this many training rows per group (random, with ``seed``).
        max_eval_per_group: same, for the eval split.
        eval_fraction: share of each group held out for evaluation when the dataset has no eval split (``bold-*``
            holds out whole people; ``bible-*`` has its own validation and test verses).
        train_split: the training split's name.
        eval_split: the eval split's name; by default the first of ``test``/``validation``/``eval`` present, or a
            per-group split of the training rows.
        config: the dataset's configuration (Hub datasets with several).
        token: Hub token for private datasets.
        seed: seed of the subsampling and of the split.
        skip_unusable_groups: leave out (with a warning) rows without a group or text and groups that cannot be
            split or evaluated, instead of raising; ``dropped`` lists what was left out.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"`--eval_fraction` must be in (0, 1), got {eval_fraction}.")
    if is_builtin(name):
        splits = _load_builtin(name, seed, eval_fraction)
    else:
        splits = dict(_load_external(name, config, token))
    if train_split not in splits:
        raise ValueError(f"`--train_split`: split {train_split!r} is not in {name!r}; valid splits are {list(splits)}.")
    if eval_split is not None and eval_split not in splits:
        raise ValueError(f"`--eval_split`: split {eval_split!r} is not in {name!r}; valid splits are {list(splits)}.")
    if eval_split is None:
        eval_split = next((split for split in EVAL_SPLIT_NAMES if split in splits and split != train_split), None)
    dropped: list[str] = []
    hint = "pass `--skip_unusable_groups` to leave them out with a warning"

    def drop_or_fail(message: str) -> None:
        if not skip_unusable_groups:
            raise ValueError(f"{message}; fix the data, or {hint}.")
        logger.warning("Left out: %s.", message)
        dropped.append(message)

    def usable_rows(dataset, split: str):
        check_columns(dataset, {"text_column": text_column, "group_column": group_column}, f"{name}[{split}]")
        bad = check_rows(dataset, text_column, group_column, split)
        if bad:
            drop_or_fail(
                f"{len(bad)} row(s) of the {split} split have no group label (column {group_column!r}) or an empty "
                f"text (column {text_column!r}): rows {bad[:10]}{' ...' if len(bad) > 10 else ''}"
            )
            keep = sorted(set(range(len(dataset))) - set(bad))
            dataset = dataset.select(keep)
        return dataset

    train = usable_rows(splits[train_split], train_split)
    if eval_split is None:
        counts = group_counts(train, group_column)
        too_small = [group for group, count in counts.items() if count < 2]
        if too_small:
            drop_or_fail(
                f"group(s) {too_small} of column {group_column!r} have a single row, which cannot be split into "
                f"train and eval (the dataset has no eval split); rows per group: {counts}"
            )
            train = train.filter(lambda row: str(row[group_column]) not in set(too_small))
        logger.info("Dataset %r has no eval split: holding out %.0f%% of each group.", name, 100 * eval_fraction)
        train, evaluation = split_per_group(train, group_column, eval_fraction, seed)
    else:
        evaluation = usable_rows(splits[eval_split], eval_split)

    requested = groups is not None
    groups = list(group_counts(train, group_column)) if groups is None else [str(group) for group in groups]
    if requested:
        check_groups(train, group_column, groups, "train")
        check_groups(evaluation, group_column, groups, "eval")
        present = set(group_counts(train, group_column)) | set(group_counts(evaluation, group_column))
        unlisted = sorted(present - set(groups))
        if unlisted:
            message = f"`--groups` {groups} leaves out group(s) {unlisted} of column {group_column!r}: "
            for split in dict.fromkeys([train_split, eval_split or train_split]):
                rows = [i for i, g in enumerate(splits[split][group_column]) if str(g) in set(unlisted)]
                more = " ..." if len(rows) > 10 else ""
                message += f"{'' if split == train_split else ' and '}{len(rows)} row(s) of the {split} split "
                message += f"(rows {rows[:10]}{more})"
            if not skip_unusable_groups:
                raise ValueError(
                    f"{message}; list every group in `--groups` (or leave it out for all), or pass "
                    "`--skip_unusable_groups` to train and evaluate the listed groups only (the rest recorded as "
                    "left out)."
                )
            logger.warning("Left out: %s.", message)
            dropped.append(f"{message}, not in `--groups`")
    else:
        eval_counts = group_counts(evaluation, group_column)
        only_eval = sorted(set(eval_counts) - set(groups))
        if only_eval:
            drop_or_fail(
                f"group(s) {only_eval} of column {group_column!r} have rows only in the eval split "
                f"{eval_split!r} (none in {train_split!r}), so they cannot be trained on"
            )
        no_eval = [group for group in groups if group not in eval_counts]
        if no_eval:
            drop_or_fail(
                f"group(s) {no_eval} of column {group_column!r} have no row in the eval split, so they cannot be "
                "evaluated"
            )
            groups = [group for group in groups if group in eval_counts]
        if not groups:
            raise ValueError(f"No group of column {group_column!r} is left to train and evaluate on.")
    keep = set(groups)
    if keep != set(group_counts(train, group_column)):
        train = train.filter(lambda row: str(row[group_column]) in keep)
    if keep != set(group_counts(evaluation, group_column)):
        evaluation = evaluation.filter(lambda row: str(row[group_column]) in keep)
    train = subsample_per_group(train, group_column, max_train_per_group, seed)
    evaluation = subsample_per_group(evaluation, group_column, max_eval_per_group, seed)
    train_counts, eval_counts = group_counts(train, group_column), group_counts(evaluation, group_column)
    logger.info("Dataset %r: train %s, eval %s.", name, train_counts, eval_counts)
    hashes = row_hashes(evaluation[text_column], [str(group) for group in evaluation[group_column]])
    record = {
        "dataset": name,
        "dataset_config": config,
        "train_split": train_split,
        "eval_split": eval_split,
        "held_out": _held_out(name, eval_split),
        "seed": seed,
        "eval_fraction": eval_fraction,
        "text_column": text_column,
        "group_column": group_column,
        "groups": list(groups),
        "max_train_per_group": max_train_per_group,
        "max_eval_per_group": max_eval_per_group,
        "train_counts": train_counts,
        "eval_counts": eval_counts,
        "dropped": list(dropped),
        "eval_sha256": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest(),
        # the training rows' content (a resumed run must see the same rows: `hf-egt train --resume_from_checkpoint`)
        "train_sha256": hashlib.sha256(
            "\n".join(sorted(row_hashes(train[text_column], [str(g) for g in train[group_column]]))).encode()
        ).hexdigest(),
        "eval_row_ids": hashes,
    }
    return GroupedSplits(train, evaluation, list(groups), dropped, record)


def _held_out(name: str, eval_split: str | None) -> str:
    """How the eval rows were held out, for ``split.json`` and the card."""
    if name.startswith("bold-"):
        return "by person"
    if is_builtin(name):
        return "by verse id, the same verses in every language"
    return "split" if eval_split else "rows of each group"


def load_grouped_dataset(name: str, **kwargs):
    """Train and eval ``datasets.Dataset``s of grouped text, validated, as ``(train, eval, groups)``: the first three
    fields of ``load_grouped_splits(name, **kwargs)`` (see it for the arguments)."""
    splits = load_grouped_splits(name, **kwargs)
    return splits.train, splits.evaluation, splits.groups


def write_split_record(record: dict, output_dir: str | Path) -> Path:
    """Write ``split.json`` (how the eval rows were held out, and their content ids) into ``output_dir``."""
    path = Path(output_dir) / SPLIT_RECORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return path


def read_split_record(folder: str | Path) -> dict | None:
    """The ``split.json`` of a training output folder, or ``None`` when it has none."""
    path = Path(folder) / SPLIT_RECORD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`--adapter`: the split record {path} is not valid JSON ({error}).") from error
