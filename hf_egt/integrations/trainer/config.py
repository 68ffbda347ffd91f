"""`EGTConfig`: `TrainingArguments` with the group objective's options (`GroupArguments`) and the chunked
per-token losses' (`TokenLossArguments`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_egt.core.losses import GROUP_LOSS_UNITS
from hf_egt.core.objective import LOSS_ESTIMATES, OBJECTIVE_MODES
from hf_egt.core.samplers import GROUP_SAMPLINGS, check_sampling_exponent

logger = logging.getLogger(__name__)

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
            One of `"erm"`, `"reweight"`, `"minmax"`, `"worst"`, `"ema"` (see `hf_egt.core.objective`).
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
            `N / n_g`, as group_DRO's `--reweight_groups`), `"temperature"` (group `g` drawn with probability
            `∝ n_g ** group_sampling_exponent`, the multilingual baseline), `"stratified"` (every optimizer step
            holds each group's share exactly: equal shares by default) or `"homogeneous"` (every micro-batch of
            `per_device_train_batch_size` rows holds one group, the groups taking turns: a HyperLoRA adapter
            generated from its batch sees one group); see `hf_egt.core.samplers`. Seeded with `data_seed` (else
            `seed`) and the epoch, so resuming is exact.
        group_sampling_exponent (`float` or `None`, *optional*, defaults to `None`):
            The `alpha` of `"temperature"` and `"stratified"` sampling (group shares `∝ n_g ** alpha`), in [-1, 1]:
            1 is the natural proportions, 0 equal shares, below 0 favours the smaller groups beyond equal. `None` is
            each sampling's default: 0.5 for `"temperature"`, 0 for `"stratified"`. With `"stratified"` it is the
            knob that trades the large groups' quality for the small ones'.
        group_loss_unit (`str`, *optional*, defaults to `"token"`):
            What a group's loss averages over, in the objective and the weight update: `"token"` (the mean over the
            group's tokens) or `"sequence"` (the mean over its sequences of each one's summed NLL, comparable across
            groups whose texts say the same thing in different numbers of tokens, e.g. languages on parallel text).
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

    With `metric_for_best_model` naming a loss, NLL or perplexity (e.g. `"worst_group_perplexity"` or
    `"worst_group_sequence_nll"`, emitted by the per-group evaluation), `greater_is_better` defaults to `False`.
    """

    group_column: str = field(default="group", metadata={"help": "Dataset column holding each row's group label."})
    groups: list[str] | None = field(
        default=None,
        metadata={"help": "Group labels in id order; defaults to the sorted unique labels of the training set."},
    )
    objective: str = field(
        default="minmax",
        metadata={"help": "Group objective (hf_egt.core.objective).", "choices": list(OBJECTIVE_MODES)},
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
            "help": "Training sampler: natural proportions, balanced (weighted, with replacement, N / n_g), "
            "temperature (p_g ∝ n_g ** group_sampling_exponent), stratified (every optimizer step holds each group's "
            "share exactly) or homogeneous (every micro-batch holds one group, the groups taking turns).",
            "choices": list(GROUP_SAMPLINGS),
        },
    )
    group_sampling_exponent: float | None = field(
        default=None,
        metadata={
            "help": "alpha of temperature and stratified sampling (shares ∝ n_g ** alpha), in [-1, 1]: 1 natural, 0 "
            "equal, below 0 favours small groups; default 0.5 for temperature, 0 for stratified."
        },
    )
    group_loss_unit: str = field(
        default="token",
        metadata={
            "help": "What a group's loss averages over: token (mean over its tokens) or sequence (mean over its "
            "sequences of each one's summed NLL; comparable across languages on parallel text).",
            "choices": list(GROUP_LOSS_UNITS),
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
            ("group_loss_unit", GROUP_LOSS_UNITS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"`{name}` must be one of {choices}, got {getattr(self, name)!r}.")
        check_sampling_exponent(self.group_sampling_exponent)
        if not 0.0 <= self.group_weight_floor < 1.0:
            raise ValueError(f"`group_weight_floor` must be in [0, 1), got {self.group_weight_floor}.")
        if self.group_update_steps < 1:
            raise ValueError(f"`group_update_steps` must be >= 1, got {self.group_update_steps}.")
        metric = self.metric_for_best_model
        if (
            metric is not None
            and self.greater_is_better is None
            and any(k in metric for k in ("perplexity", "loss", "nll"))
        ):
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
            chunks of tokens (`hf_egt.core.losses.chunked_head_token_losses`), so that no `(batch, seq_len, vocab)`
            logits exist in training or evaluation. Used when the model has a separable decoder and output embedding and
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
