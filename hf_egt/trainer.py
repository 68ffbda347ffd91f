"""``EGTTrainer``: worst-group (min-max) LoRA fine-tuning of causal language models with ``transformers.Trainer``.

Swap ``Trainer`` for ``EGTTrainer`` and ``TrainingArguments`` for ``EGTConfig``; give every training row a group label
(``group_column``). The loss becomes ``sum_g q_g L_g`` where ``L_g`` is the token-mean loss of group ``g`` and the
weights ``q`` come from ``hf_egt.objective.GroupObjective`` (``trainer.objective``).

How the loss is computed, and why it is exact for any split of a batch:

- The model is called *without* labels, so it does not compute its own loss. By default its forward returns the
  per-token losses computed from the decoder's hidden states through the output embedding in chunks
  (``hf_egt.output_head``: no ``(batch, seq_len, vocab)`` logits); otherwise one ``cross_entropy(reduction="none")``
  on its logits gives them (``hf_egt.losses``). They are reduced to each sequence's token mean with the sequence's
  token count as example weight. A group's loss is therefore a mean over the group's tokens.
- ``get_batch_samples`` sees the whole accumulation window first: it counts each group's tokens over the window (and
  over processes) with ``objective.begin_window``; each micro-batch then contributes ``objective.window_loss`` and the
  window's last micro-batch calls ``objective.end_window`` (the weight update, used from the next step on). The loss
  is normalised over the window here, so ``loss_is_scaled_for_ga = True``, and multiplied by the number of processes
  because DDP/FSDP average gradients.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .losses import causal_lm_token_losses, count_target_tokens, sequence_losses
from .objective import LOSS_ESTIMATES, OBJECTIVE_MODES, GroupObjective, group_means, group_sums
from .output_head import TOKEN_LOSS_LABELS, add_token_loss_forward, check_token_loss_forward
from .samplers import GROUP_SAMPLINGS, group_sampler

logger = logging.getLogger(__name__)

OBJECTIVE_STATE_NAME = "egt_objective.safetensors"
GROUP_REFERENCES = ("none", "base", "column")


# ---------------------------------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class GroupArguments:
    """Group-objective options shared by [`EGTConfig`] and [`hf_egt.EGTSFTConfig`].

    Parameters:
        group_column (`str`, *optional*, defaults to `"group"`):
            Dataset column holding each row's group label (`str` or `int`).
        groups (`list[str]` or `None`, *optional*, defaults to `None`):
            Explicit group labels, in id order. Defaults to the sorted unique labels of the training set. Every label
            listed must have at least one training row.
        objective (`str`, *optional*, defaults to `"minmax"`):
            One of `"erm"`, `"reweight"`, `"minmax"`, `"worst"`, `"ema"` (see `hf_egt.objective`).
        group_step_size (`float`, *optional*, defaults to `0.01`):
            Exponentiated-gradient step size of the `"minmax"` group weights.
        group_adjustment (`float`, *optional*, defaults to `0.0`):
            Generalisation adjustment `C`: `C / sqrt(n_g)` is added to each group's loss in the weight update.
        group_ema_decay (`float`, *optional*, defaults to `0.9`):
            Decay of the moving average of group losses (`"ema"`).
        group_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature on the moving average of group losses (`"ema"`).
        group_sampling (`str`, *optional*, defaults to `"natural"`):
            `"natural"` (the data's proportions), `"balanced"` (weighted sampler with replacement, per-example weight
            `N / n_g`, as group_DRO's `--reweight_groups`) or `"stratified"` (every optimizer step holds every group);
            see `hf_egt.samplers`. Seeded with `data_seed` (else `seed`) and the epoch, so resuming is exact.
        group_loss_estimate (`str`, *optional*, defaults to `"batch"`):
            What the `"minmax"` update sees of each group: `"batch"` (the step's loss, 0 when absent, as the
            reference), `"last"` (absent groups keep their last value, as DoReMi) or `"ema"` (moving average with
            `group_ema_decay` over the present groups, as group_DRO's `--btl`).
        group_weight_floor (`float`, *optional*, defaults to `0.0`):
            DoReMi's `c`: the weights are mixed `(1 - c) q + c / k` with uniform after each update.
        group_reference (`str`, *optional*, defaults to `"none"`):
            Excess loss (DoReMi): `"base"` computes each training row's loss under the base model (adapter disabled)
            once before training; `"column"` reads them from `group_reference_column` (e.g. an ERM run's losses). The
            update then scores groups by `clip(loss - reference, 0)`; the training loss stays the weighted NLL.
        group_reference_column (`str`, *optional*, defaults to `"reference_loss"`):
            Training-set column holding (or receiving) the per-example reference losses.
        group_update_dataset (`str` or `None`, *optional*, defaults to `None`):
            Drive the weights by a validation split's group losses instead of the training losses: the name of an
            `eval_dataset` entry (`"eval"` for a single eval dataset). Evaluated every `group_update_steps` steps.
        group_update_steps (`int`, *optional*, defaults to `10`):
            Optimizer steps between two updates from `group_update_dataset`.

    With `metric_for_best_model` naming a loss or perplexity (e.g. `"worst_group_perplexity"`, emitted by the
    per-group evaluation), `greater_is_better` defaults to `False`.
    """

    group_column: str = field(default="group", metadata={"help": "Dataset column holding each row's group label."})
    groups: list[str] | None = field(
        default=None,
        metadata={"help": "Group labels in id order; defaults to the sorted unique labels of the training set."},
    )
    objective: str = field(
        default="minmax", metadata={"help": f"Group objective, one of {', '.join(OBJECTIVE_MODES)}."}
    )
    group_step_size: float = field(
        default=0.01, metadata={"help": "Exponentiated-gradient step size of the min-max group weights."}
    )
    group_adjustment: float = field(
        default=0.0, metadata={"help": "Generalisation adjustment C (C / sqrt(n_g) is added to group losses)."}
    )
    group_ema_decay: float = field(default=0.9, metadata={"help": "Decay of the group-loss moving average (ema)."})
    group_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature on the group-loss moving average (ema)."}
    )
    group_sampling: str = field(
        default="natural",
        metadata={
            "help": "Training sampler: natural proportions, balanced (weighted, with replacement, N / n_g) or "
            "stratified (every optimizer step holds every group).",
            "choices": list(GROUP_SAMPLINGS),
        },
    )
    group_loss_estimate: str = field(
        default="batch",
        metadata={
            "help": "Group losses seen by the minmax update: batch (absent groups 0, the reference), last (absent "
            "groups keep their last value, DoReMi) or ema (moving average over present groups, group_DRO --btl).",
            "choices": list(LOSS_ESTIMATES),
        },
    )
    group_weight_floor: float = field(
        default=0.0, metadata={"help": "DoReMi's c: weights are mixed (1 - c) q + c / k with uniform."}
    )
    group_reference: str = field(
        default="none",
        metadata={
            "help": "Excess loss over a reference (DoReMi): none, base (base model, adapter disabled, computed once "
            "before training) or column (per-example losses in `group_reference_column`).",
            "choices": list(GROUP_REFERENCES),
        },
    )
    group_reference_column: str = field(
        default="reference_loss", metadata={"help": "Training column holding per-example reference losses."}
    )
    group_update_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Name of the eval dataset whose group losses drive the weights ('eval' for a single one); "
            "default: the training losses."
        },
    )
    group_update_steps: int = field(
        default=10, metadata={"help": "Optimizer steps between updates from `group_update_dataset`."}
    )

    def __post_init__(self):
        if self.objective not in OBJECTIVE_MODES:
            raise ValueError(f"`objective` must be one of {OBJECTIVE_MODES}, got {self.objective!r}.")
        for name, choices in (
            ("group_sampling", GROUP_SAMPLINGS),
            ("group_loss_estimate", LOSS_ESTIMATES),
            ("group_reference", GROUP_REFERENCES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"`{name}` must be one of {choices}, got {getattr(self, name)!r}.")
        if not 0.0 <= self.group_weight_floor < 1.0:
            raise ValueError(f"`group_weight_floor` must be in [0, 1), got {self.group_weight_floor}.")
        if self.group_update_steps < 1:
            raise ValueError(f"`group_update_steps` must be >= 1, got {self.group_update_steps}.")
        metric = self.metric_for_best_model
        if metric is not None and self.greater_is_better is None and ("perplexity" in metric or "loss" in metric):
            self.greater_is_better = False  # Trainer would default to True for a name not ending in "loss"
        super().__post_init__()

    def __getstate__(self) -> dict:
        """Pickled state without secrets: `Trainer` writes the arguments to `training_args.bin` (a pickle) in every
        checkpoint and output folder, and a `hub_token` there would be uploaded with them."""
        state = dict(self.__dict__)
        for name in state:
            if name.endswith("_token") and state[name] is not None:
                state[name] = None
        return state

    def __copy__(self):
        """A copy in memory keeps the token (only pickles drop it)."""
        copied = type(self).__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __deepcopy__(self, memo: dict):
        import copy

        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return copied


@dataclass
class TokenLossArguments:
    """How [`EGTTrainer`] and [`hf_egt.EGTSFTTrainer`] compute per-token losses.

    Parameters:
        chunked_token_losses (`bool`, *optional*, defaults to `True`):
            Compute the per-token losses from the decoder's final hidden states through the output embedding, in
            chunks of tokens (`hf_egt.losses.chunked_head_token_losses`), so that no `(batch, seq_len, vocab)` logits
            exist in training or evaluation. Used when the model has a separable decoder and output embedding and
            the two paths agree on the first batch; otherwise (or with `False`) the losses come from the full logits,
            and the reason is logged. Evaluation with `compute_metrics` uses the full logits (the metrics need them).
        token_loss_chunk_size (`int`, *optional*, defaults to `256`):
            Tokens per chunk of the chunked losses: the extra peak memory is about three `(chunk, vocab)` float32
            blocks (150 MB at a vocabulary of 49,152).
    """

    chunked_token_losses: bool = field(
        default=True,
        metadata={"help": "Per-token losses from the hidden states through the output embedding in chunks."},
    )
    token_loss_chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk of the chunked losses."})

    def __post_init__(self):
        if self.token_loss_chunk_size < 1:
            raise ValueError(
                f"`token_loss_chunk_size` must be a positive number of tokens, got {self.token_loss_chunk_size}."
            )
        super().__post_init__()


@dataclass
class EGTConfig(GroupArguments, TokenLossArguments, TrainingArguments):
    """[`~transformers.TrainingArguments`] for [`EGTTrainer`], with the group objective's options.

    Parameters:
        text_column (`str`, *optional*, defaults to `"text"`):
            Column of raw text, tokenized for you with `processing_class` when the dataset has no `input_ids`.
        max_length (`int` or `None`, *optional*, defaults to `512`):
            Truncation length (tokens) when tokenizing `text_column`.

    See [`GroupArguments`] for `group_column`, `groups`, `objective`, `group_step_size`, `group_adjustment`,
    `group_ema_decay` and `group_temperature`, [`TokenLossArguments`] for `chunked_token_losses` and
    `token_loss_chunk_size`; the rest are [`~transformers.TrainingArguments`].
    """

    text_column: str = field(
        default="text", metadata={"help": "Raw-text column, tokenized when the dataset has no `input_ids`."}
    )
    max_length: int | None = field(default=512, metadata={"help": "Truncation length when tokenizing `text_column`."})


# ---------------------------------------------------------------------------------------------------------------------
# Data helpers.
# ---------------------------------------------------------------------------------------------------------------------


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

    def __init__(
        self, collator: Callable, group_column: str, objective: GroupObjective, reference_column: str | None = None
    ):
        self.collator = collator
        self.group_column = group_column
        self.objective = objective
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
        batch[self.group_column] = self.objective.encode(labels)
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


def output_field(outputs, name: str):
    """`outputs.name` or `outputs[name]` when present, else `None`."""
    if isinstance(outputs, dict):
        return outputs.get(name)
    return getattr(outputs, name, None)


def wrap_model(model, peft_config, seed: int | None = None):
    """Wrap `model` with `peft_config`: a `hf_egt.hyper.HyperLoRAConfig` gives a `HyperLoRAModel`, any other peft
    config a `PeftModel`. Returns `model` unchanged without a config.

    With `seed`, the random initialisation of the new adapter weights is seeded first (as `Trainer` seeds before
    `model_init`), so a run does not depend on what consumed the global RNG before it.
    """
    if peft_config is None:
        return model
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    try:  # optional: the hypernetwork adapter lives in its own module
        from .hyper import HyperLoRAConfig, HyperLoRAModel
    except ImportError:
        HyperLoRAConfig = HyperLoRAModel = None
    if HyperLoRAConfig is not None and isinstance(peft_config, HyperLoRAConfig):
        return HyperLoRAModel(model, peft_config)
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError("`model` is already a `PeftModel`: pass it without `peft_config`, or pass the base model.")
    return get_peft_model(model, peft_config)


def check_checkpoint(checkpoint: str, groups: Sequence[str | int] | None = None, objective: str | None = None) -> None:
    """Raise a clear error unless `checkpoint` is a complete, readable `EGTTrainer` checkpoint for these groups.

    Checked without loading a model: the folder, its `trainer_state.json`, the headers of its safetensors files and
    the group objective's state (groups and mode). A `FileNotFoundError` or `ValueError` names the file at fault.
    """
    import json

    from safetensors import safe_open

    from .serialization import METADATA_KEY, check_safetensors_files

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
    objective_path = os.path.join(checkpoint, OBJECTIVE_STATE_NAME)
    if not os.path.isfile(objective_path):
        raise FileNotFoundError(
            f"`resume_from_checkpoint`: {checkpoint} has no group objective state {objective_path}."
        )
    check_safetensors_files(checkpoint)
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
    saved_mode = settings.get("mode")
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


def group_eval_metrics(
    sums: torch.Tensor, counts: torch.Tensor, groups: Sequence[str | int], prefix: str
) -> dict[str, Any]:
    """Per-group token-mean loss and perplexity, with their gap and worst group (`hf_egt.metrics.summarize_groups`)."""
    from .metrics import summarize_groups

    losses = {g: (s / c).item() if c > 0 else math.nan for g, s, c in zip(groups, sums, counts)}
    perplexities = {g: math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan for g, loss in losses.items()}
    metrics = {f"{prefix}_group_loss/{g}": loss for g, loss in losses.items()}
    metrics.update({f"{prefix}_group_perplexity/{g}": ppl for g, ppl in perplexities.items()})
    if any(not math.isnan(loss) for loss in losses.values()):
        loss_summary = summarize_groups(losses)
        metrics[f"{prefix}_group_loss_gap"] = loss_summary["gap"]
        metrics[f"{prefix}_group_perplexity_gap"] = summarize_groups(perplexities)["gap"]
        metrics[f"{prefix}_worst_group_loss"] = losses[loss_summary["worst_group"]]
        metrics[f"{prefix}_worst_group_perplexity"] = perplexities[loss_summary["worst_group"]]
        metrics[f"{prefix}_worst_group"] = loss_summary["worst_group"]
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Shared trainer logic.
# ---------------------------------------------------------------------------------------------------------------------


class EGTTrainerMixin:
    """Group-objective logic shared by [`EGTTrainer`] and [`hf_egt.EGTSFTTrainer`].

    Subclasses implement `_token_losses(model, inputs) -> (token_losses, mask, outputs)` and call `_setup_objective`
    before and `_finish_setup` after `super().__init__`.
    """

    # `compute_loss` normalises over the whole accumulation window itself.
    loss_is_scaled_for_ga = True

    def _setup_objective(self, args, train_dataset, eval_dataset) -> None:
        if not isinstance(args, GroupArguments):
            raise TypeError(f"`args` must be an `EGTConfig` (or `EGTSFTConfig`), got {type(args).__name__}.")
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        train_labels = dataset_group_labels(train_dataset, args.group_column, "train")
        groups = resolve_groups(
            args.groups,
            train_labels,
            {name: dataset_group_labels(data, args.group_column, name) for name, data in eval_sets.items()},
        )
        if args.group_update_dataset is not None and args.group_update_dataset not in eval_sets:
            raise ValueError(
                f"`group_update_dataset`={args.group_update_dataset!r} is not an eval dataset; the eval datasets are "
                f"{[name for name, data in eval_sets.items() if data is not None]}."
            )
        if args.group_update_dataset is not None and eval_sets[args.group_update_dataset] is None:
            raise ValueError("`group_update_dataset`='eval' needs an `eval_dataset`.")
        if train_labels is None and (args.group_sampling != "natural" or args.group_reference != "none"):
            raise ValueError(
                f"`group_sampling`={args.group_sampling!r} and `group_reference`={args.group_reference!r} need a "
                "map-style training dataset (with a length); an iterable one only supports natural sampling and no "
                "reference."
            )
        columns = getattr(train_dataset, "column_names", None)
        if (
            args.group_reference == "column"
            and isinstance(columns, list)
            and args.group_reference_column not in columns
        ):
            raise ValueError(
                f"`group_reference`='column' but the train dataset has no column {args.group_reference_column!r}; its "
                f"columns are {columns}. Set `group_reference_column` or `group_reference`='base'."
            )
        sizes = None
        if train_labels is not None:  # training-set group sizes, for the adjustment of every group (the reference)
            sizes = [sum(1 for label in train_labels if label == group) for group in groups]
        self.objective = GroupObjective(
            mode=args.objective,
            step_size=args.group_step_size,
            groups=groups,
            adjustment=args.group_adjustment,
            ema_decay=args.group_ema_decay,
            temperature=args.group_temperature,
            loss_estimate=args.group_loss_estimate,
            weight_floor=args.group_weight_floor,
            group_sizes=sizes,
        )
        self._window_remaining = 0
        self._group_log: dict[str, float] = {}
        self._ple_values: list[float] = []
        self._eval_sums: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_eval_group_sums: tuple[torch.Tensor, torch.Tensor] | None = None

    def _finish_setup(self) -> None:
        reference_column = self.args.group_reference_column if self.args.group_reference != "none" else None
        self.data_collator = GroupCollator(
            self.data_collator, self.args.group_column, self.objective, reference_column=reference_column
        )
        self._log_under_output_dir()
        reason = "`chunked_token_losses=False`"
        if self.args.chunked_token_losses:
            reason = add_token_loss_forward(self.model, self.args.token_loss_chunk_size)
        self._chunked_token_losses = reason is None
        self._chunked_token_losses_checked = False
        if reason is not None:
            logger.info("Per-token losses from the full logits: %s.", reason)
        if self.args.label_names is None and "labels" not in self.label_names:
            # Trainer reads label names off the model class's `forward`; a wrapper such as `HyperLoRAModel` hides
            # them, and `prediction_step` would then skip `compute_loss` (no per-group evaluation).
            self.label_names = ["labels"]
        if self.args.group_reference == "base":  # once, before training (and before any check of the first step)
            self.train_dataset = self.train_dataset.add_column(
                reference_column, self.reference_losses(self.train_dataset, disable_adapter=True).tolist()
            )
        if self.args.group_update_dataset is not None:
            self.add_callback(GroupWeightsFromEvalCallback(self))

    @torch.no_grad()
    def reference_losses(self, dataset, model=None, disable_adapter: bool = False) -> torch.Tensor:
        """Per-example token-mean losses of `model` (default: the trainer's) on `dataset`, in row order.

        With `disable_adapter`, the peft adapter is switched off: the base model's losses. Computed on every process
        (each needs all of them); used as DoReMi's reference for the excess loss (`group_reference`).
        """
        import contextlib

        model = self.model if model is None else model
        if disable_adapter and not hasattr(model, "disable_adapter"):
            raise ValueError(
                f"`group_reference`='base' needs a peft model to disable its adapter; {type(model).__name__} has none. "
                "Compute the reference losses yourself and pass them with `group_reference`='column'."
            )
        collator = self._get_collator_with_removed_columns(self.data_collator, "reference")
        batch_size = self.args.per_device_eval_batch_size
        was_training = model.training
        model.eval()
        losses = []
        context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        try:
            with context:
                for start in range(0, len(dataset), batch_size):
                    rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                    batch = collator(rows)
                    dropped = (self.args.group_column, self.args.group_reference_column)
                    inputs = {k: v.to(self.args.device) for k, v in batch.items() if k not in dropped}
                    token_losses, mask, _ = self._token_losses(model, inputs)
                    losses.append(sequence_losses(token_losses, mask)[0].float().cpu())
        finally:
            model.train(was_training)
            for values in getattr(self, "_metrics", {}).get("eval", {}).values():
                values.clear()  # TRL's eval metrics must not hold these forward passes
        return torch.cat(losses)

    def _get_train_sampler(self, train_dataset=None):
        """The group sampler of `group_sampling` (`hf_egt.samplers`); the usual random sampler for `natural`."""
        if self.args.group_sampling == "natural":
            return super()._get_train_sampler(train_dataset)
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        labels = dataset_group_labels(train_dataset, self.args.group_column, "train")
        args = self.args
        return group_sampler(
            args.group_sampling,
            self.objective.encode(labels),
            self.objective.num_groups,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            step_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        )

    def update_weights_from_eval(self) -> torch.Tensor:
        """Update the group weights from `group_update_dataset`'s group losses (one pass over it); returns them."""
        name = self.args.group_update_dataset
        dataloader = self.get_eval_dataloader(name if isinstance(self.eval_dataset, dict) else None)
        output = self.evaluation_loop(
            dataloader, "Group weights", prediction_loss_only=True, metric_key_prefix="group_update"
        )
        should_log = self.control.should_log
        self.log(output.metrics)  # the losses behind the update, in the log history
        self.control.should_log = should_log  # `log` clears it: the step's own training log must still happen
        sums, tokens = self._last_eval_group_sums
        weights = self.objective.observe(group_means(sums, tokens), tokens)
        for group, weight in zip(self.objective.groups, weights):
            self._group_log[f"group_weight/{group}"] = weight.item()
        return weights

    # -- columns ------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        kept = [self.args.group_column]
        if self.args.group_reference != "none":
            kept.append(self.args.group_reference_column)
        self._signature_columns = [*self._signature_columns, *(c for c in kept if c not in self._signature_columns)]

    # -- per-token losses ---------------------------------------------------------------------------------------------

    def _chunked_token_losses_of(self, model, inputs: dict[str, Any], labels: torch.Tensor, **forward_kwargs):
        """``(token_losses, mask, outputs)`` from the chunked path (`TokenLossArguments`), or `None` when the full
        logits are to be used: the path is off, it disagreed with the full one on the first batch, or evaluation
        runs `compute_metrics` (which needs the logits)."""
        if not self._chunked_token_losses or (not model.training and self.compute_metrics is not None):
            return None
        if not self._chunked_token_losses_checked:
            self._chunked_token_losses_checked = True
            reason = check_token_loss_forward(model, {**inputs, **forward_kwargs}, labels)
            if reason is not None:
                logger.warning("Per-token losses from the full logits: %s.", reason)
                self._chunked_token_losses = False
                return None
        outputs = model(**inputs, **forward_kwargs, **{TOKEN_LOSS_LABELS: labels})
        return outputs["token_losses"], outputs["label_mask"], outputs

    # -- training -----------------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            column = self.args.group_column
            if any("labels" not in batch for batch in batch_samples):
                raise ValueError("EGTTrainer needs `labels` in every batch (-100 where a token must not count).")
            self.objective.begin_window(
                [batch[column] for batch in batch_samples],
                [count_target_tokens(batch["labels"]) for batch in batch_samples],
            )
            self._window_remaining = len(batch_samples)
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        column = self.args.group_column
        if column not in inputs:
            raise ValueError(f"The batch has no group column {column!r}; it has {sorted(inputs)}.")
        group_ids = inputs[column]
        reference = inputs.get(self.args.group_reference_column) if self.args.group_reference != "none" else None
        dropped = (column, self.args.group_reference_column)
        token_losses, mask, outputs = self._token_losses(model, {k: v for k, v in inputs.items() if k not in dropped})
        losses, counts = sequence_losses(token_losses, mask)
        group_ids = group_ids.to(losses.device)
        if model.training:
            if self.args.group_reference != "none" and reference is None:
                raise ValueError(
                    f"`group_reference`={self.args.group_reference!r} but the training batch has no "
                    f"{self.args.group_reference_column!r}: the reference losses did not reach the batch."
                )
            reference = None if reference is None else reference.to(losses.device)
            loss = self._training_loss(losses, group_ids, counts, reference)
        else:
            loss = self._eval_loss(losses, group_ids, counts)
        ple = output_field(outputs, "ple")
        if ple is not None and model.training:  # a per-micro-batch mean: average it over the window
            self._ple_values.append(ple.detach().float().item())
            loss = loss + ple / getattr(self, "current_gradient_accumulation_steps", 1)
        elif ple is not None:
            loss = loss + ple
        return (loss, outputs) if return_outputs else loss

    def _training_loss(
        self, losses: torch.Tensor, group_ids: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None
    ) -> torch.Tensor:
        if self._window_remaining == 0:  # called outside the training loop: a window of one batch
            self.objective.begin_window([group_ids], [counts])
            self._window_remaining = 1
        loss = self.objective.window_loss(losses, group_ids, counts, reference_losses=reference).loss
        self._window_remaining -= 1
        if self._window_remaining == 0:
            self._end_window()
        # DDP and FSDP average gradients over processes; the window shares add up over processes.
        return loss * self.accelerator.num_processes

    def _end_window(self) -> None:
        try:
            window = self.objective.end_window(update=self.args.group_update_dataset is None)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"{error} (training step {self.state.global_step + 1}). The loss diverged: lower the learning rate or "
                "`group_step_size`, or check the data of that group."
            ) from error
        for group, loss, count, weight in zip(
            self.objective.groups, window.group_losses, window.group_counts, window.weights
        ):
            if count > 0:
                self._group_log[f"group_loss/{group}"] = loss.item()
            self._group_log[f"group_weight/{group}"] = weight.item()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: merge the latest window's group statistics
            logs.update(self._group_log)
            if self._ple_values:
                logs["ple"] = sum(self._ple_values) / len(self._ple_values)
                self._ple_values.clear()
        super().log(logs, start_time)

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def _eval_loss(self, losses: torch.Tensor, group_ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if self._eval_sums is not None:
            sums, tokens = group_sums(losses.detach().double(), group_ids, self.objective.num_groups, counts.double())
            self._eval_sums[0].add_(sums.cpu())
            self._eval_sums[1].add_(tokens.cpu())
        return (losses * counts).sum() / counts.sum().clamp_min(1)

    def evaluation_loop(self, *args, **kwargs):
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        num_groups = self.objective.num_groups
        self._eval_sums = (torch.zeros(num_groups, dtype=torch.float64), torch.zeros(num_groups, dtype=torch.float64))
        try:
            output = super().evaluation_loop(*args, **kwargs)
            sums, tokens = (self._reduce_sum(t) for t in self._eval_sums)
        finally:
            self._eval_sums = None
        self._last_eval_group_sums = (sums, tokens)
        output.metrics.update(group_eval_metrics(sums, tokens, self.objective.groups, prefix))
        return output

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        reduced = self.accelerator.reduce(tensor.to(self.accelerator.device), reduction="sum")
        return reduced.cpu()

    # -- checkpoints --------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            self.objective.save(os.path.join(output_dir, OBJECTIVE_STATE_NAME))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; a checkpoint (or `True`: the last one in `output_dir`) is checked, including its group
        objective state, before anything is loaded from it, then restored exactly (weights, optimizer, scheduler,
        RNG, data position and group weights)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_checkpoint(self.args.output_dir)
        if isinstance(resume_from_checkpoint, str):
            check_checkpoint(resume_from_checkpoint, self.objective.groups, self.objective.mode)
            self.objective.load(os.path.join(resume_from_checkpoint, OBJECTIVE_STATE_NAME))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _log_under_output_dir(self) -> None:
        """TensorBoard logs go to `output_dir/runs/...`: `TensorBoardCallback` picks that folder only at
        `on_train_begin`, and an `evaluate()` before `train()` would create its writer in `./runs`."""
        from transformers.integrations import TensorBoardCallback
        from transformers.integrations.integration_utils import default_logdir

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())


class GroupWeightsFromEvalCallback(TrainerCallback):
    """Every `group_update_steps` optimizer steps, update the group weights from the group losses of the validation
    split `group_update_dataset` (held-out-driven weights: a small group fitted fast on training data keeps its
    weight while its held-out loss stays high). The update is in the objective's state, saved with checkpoints."""

    def __init__(self, trainer: EGTTrainerMixin):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.group_update_steps == 0:
            self.trainer.update_weights_from_eval()
        return control


# ---------------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------------


class EGTTrainer(EGTTrainerMixin, Trainer):
    """[`~transformers.Trainer`] for causal LMs with a group objective (min-max by default) over `group_column`.

    Args:
        model: a causal LM (`AutoModelForCausalLM`), a `PeftModel`, or a Hub id / folder to load one from.
        args: an [`EGTConfig`].
        train_dataset, eval_dataset: datasets with `input_ids` (or raw text in `text_column`) and `group_column`;
            `eval_dataset` may be a dict of them.
        processing_class: the tokenizer (pads batches; tokenizes raw text).
        peft_config: a `peft` config (e.g. `LoraConfig`) to wrap `model` with, or a `hf_egt.hyper.HyperLoRAConfig`.
        data_collator: defaults to [`DataCollatorForCausalLM`] with the tokenizer's pad token.
        **kwargs: passed to [`~transformers.Trainer`].

    Example:
        ```python
        trainer = EGTTrainer(
            model=model,
            args=EGTConfig("out", objective="minmax", group_step_size=0.01),
            train_dataset=train,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        trainer.train()
        ```
    """

    def __init__(
        self,
        model=None,
        args: EGTConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            args = EGTConfig(output_dir="egt-output")
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model)
        model = wrap_model(model, peft_config, seed=args.seed)
        train_dataset = tokenize_text_dataset(
            train_dataset, processing_class, args.text_column, args.max_length, "train"
        )
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: tokenize_text_dataset(data, processing_class, args.text_column, args.max_length, name)
                for name, data in eval_dataset.items()
            }
        else:
            eval_dataset = tokenize_text_dataset(
                eval_dataset, processing_class, args.text_column, args.max_length, "eval"
            )
        self._setup_objective(args, train_dataset, eval_dataset)
        if data_collator is None:
            data_collator = DataCollatorForCausalLM(pad_token_id=_pad_token_id(processing_class))
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._finish_setup()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """`Trainer.evaluate`, tokenizing raw text and checking the group labels of a dataset passed here first."""
        if eval_dataset is not None and not isinstance(eval_dataset, (str, dict)):
            args = self.args
            eval_dataset = tokenize_text_dataset(
                eval_dataset, self.processing_class, args.text_column, args.max_length, metric_key_prefix
            )
            resolve_groups(
                self.objective.groups,
                None,
                {metric_key_prefix: dataset_group_labels(eval_dataset, args.group_column, metric_key_prefix)},
            )
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _token_losses(self, model, inputs: dict[str, Any]):
        """Per-token losses from the chunked path, or a forward without labels (no loss inside the model) and one
        per-token cross-entropy on its logits."""
        if "labels" not in inputs:
            raise ValueError("EGTTrainer needs `labels` in every batch (-100 where a token must not count).")
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        chunked = self._chunked_token_losses_of(model, model_inputs, inputs["labels"])
        if chunked is not None:
            return chunked
        outputs = model(**model_inputs)
        logits = output_field(outputs, "logits")
        if logits is None:
            logits = outputs[0]
        token_losses, mask = causal_lm_token_losses(logits, inputs["labels"])
        return token_losses, mask, outputs


def _pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token id, else its EOS id, else 0 (padding positions are masked out anyway)."""
    if tokenizer is None:
        return 0
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
