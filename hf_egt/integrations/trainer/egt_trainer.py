"""``EGTTrainer``: worst-group (min-max) LoRA fine-tuning of causal language models with ``transformers.Trainer``.

Swap ``Trainer`` for ``EGTTrainer`` and ``TrainingArguments`` for ``EGTConfig``; give every training row a group label
(``group_column``). The loss becomes ``sum_g q_g L_g`` where ``L_g`` is the token-mean loss of group ``g`` and the
weights ``q`` come from ``hf_egt.core.objective.GroupObjective`` (``trainer.group_objective``).

How the loss is computed, and why it is exact for any split of a batch:

- The model is called *without* labels, so it does not compute its own loss. By default its forward returns the
  per-token losses computed from the decoder's hidden states through the output embedding in chunks
  (``hf_egt.integrations.output_head``: no ``(batch, seq_len, vocab)`` logits); otherwise one
  ``cross_entropy(reduction="none")`` on its logits gives them (``hf_egt.core.losses``). They are reduced to each
  sequence's token mean with the sequence's token count as example weight. A group's loss is therefore a mean over the
  group's tokens.
- ``get_batch_samples`` sees the whole accumulation window first: it counts each group's tokens over the window (and
  over processes) with ``objective.begin_window``; each micro-batch then contributes ``objective.window_loss`` and the
  window's last micro-batch calls ``objective.end_window`` (the weight update, used from the next step on). The loss
  is normalised over the window here, so ``loss_is_scaled_for_ga = True``, and multiplied by the number of processes
  because DDP/FSDP average gradients.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import Trainer

from hf_egt.core.groups import group_means, group_sums
from hf_egt.core.losses import (
    causal_lm_token_losses,
    count_target_tokens,
    group_loss_inputs,
    group_loss_weights,
    sequence_losses,
)
from hf_egt.core.metrics.likelihood import group_likelihood
from hf_egt.core.metrics.summary import GroupRun, group_run
from hf_egt.core.objective import GroupLabels, GroupObjective
from hf_egt.core.samplers import group_sampler
from hf_egt.core.vocabulary import OBJECTIVE_STATE_NAME, objective_state_path, renamed_attribute
from hf_egt.integrations.output_head import TOKEN_LOSS_LABELS, add_token_loss_forward, check_token_loss_forward
from hf_egt.integrations.trainer.callbacks import GroupWeightsFromEvalCallback
from hf_egt.integrations.trainer.checkpoints import check_checkpoint, last_checkpoint
from hf_egt.integrations.trainer.config import EGTConfig, GroupArguments
from hf_egt.integrations.trainer.data_utils import (
    DataCollatorForCausalLM,
    GroupCollator,
    dataset_group_labels,
    pad_token_id_of,
    resolve_groups,
    tokenize_text_dataset,
)
from hf_egt.integrations.trainer.hub_mixin import EGTHubMixin
from hf_egt.integrations.trainer.modeling import wrap_model

logger = logging.getLogger(__name__)


def output_field(outputs, name: str):
    """`outputs.name` or `outputs[name]` when present, else `None`."""
    if isinstance(outputs, dict):
        return outputs.get(name)
    return getattr(outputs, name, None)


def group_eval_metrics(
    sums: torch.Tensor, counts: torch.Tensor, groups: Sequence[str | int], prefix: str
) -> dict[str, Any]:
    """Per-group token-mean loss and perplexity, with their gap and worst group, as flat metric names
    (``<prefix>_group_loss/<g>``, ...) from the groups' summed losses and token counts
    (`hf_egt.core.metrics.group_likelihood`)."""
    return eval_metrics_from_likelihood(group_likelihood(sums, counts, groups), prefix)


def eval_metrics_from_likelihood(likelihood: dict, prefix: str) -> dict[str, Any]:
    """`group_likelihood`'s result as the flat metric names `Trainer.evaluate` logs (and `metric_for_best_model`
    selects on)."""
    losses, perplexities = likelihood["nll"], likelihood["perplexity"]
    metrics = {f"{prefix}_group_loss/{g}": loss for g, loss in losses["per_group"].items()}
    metrics.update({f"{prefix}_group_perplexity/{g}": ppl for g, ppl in perplexities["per_group"].items()})
    if "worst_group" in losses:
        worst = losses["worst_group"]
        metrics[f"{prefix}_group_loss_gap"] = losses["gap"]
        metrics[f"{prefix}_group_perplexity_gap"] = perplexities["gap"]
        metrics[f"{prefix}_worst_group_loss"] = losses["per_group"][worst]
        metrics[f"{prefix}_worst_group_perplexity"] = perplexities["per_group"][worst]
        metrics[f"{prefix}_worst_group"] = worst
    for unit in ("sequence_nll", "bits_per_byte"):  # the worst group in these units may be another one
        values = likelihood.get(unit)
        if values is None:
            continue
        metrics.update({f"{prefix}_group_{unit}/{g}": value for g, value in values["per_group"].items()})
        if "worst_group" in values:
            metrics[f"{prefix}_group_{unit}_gap"] = values["gap"]
            metrics[f"{prefix}_worst_group_{unit}"] = values["per_group"][values["worst_group"]]
    # token-pooled over all groups, as each group's value (Trainer's `<prefix>_loss` is a mean over batches)
    metrics[f"{prefix}_overall_loss"] = losses["overall"]
    metrics[f"{prefix}_overall_perplexity"] = perplexities["overall"]
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Shared trainer logic.
# ---------------------------------------------------------------------------------------------------------------------


class EGTTrainerMixin:
    """Group-objective logic shared by [`EGTTrainer`] and [`hf_egt.EGTSFTTrainer`] (their card and Hub policy is
    [`EGTHubMixin`], in hub_mixin.py).

    Subclasses implement `_full_token_losses(model, inputs) -> (token_losses, mask, outputs)` (the path without
    chunks) and call `_setup_objective`
    before and `_finish_setup` after `super().__init__`.
    """

    # `compute_loss` normalises over the whole accumulation window itself.
    loss_is_scaled_for_ga = True
    # `trainer.group_objective` is the `GroupObjective`; `args.objective` is its name. The old spelling warns.
    objective = renamed_attribute("objective", "group_objective", "EGTTrainer")

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
        # The training labels are read, checked and encoded here, once: the group sizes (the reference of the
        # adjustment of every group) and the group sampler both use these ids.
        self._train_group_ids = None if train_labels is None else GroupLabels(groups).encode(train_labels)
        sizes = None
        if self._train_group_ids is not None:
            sizes = torch.bincount(self._train_group_ids, minlength=len(groups)).tolist()
        self.group_objective = GroupObjective(
            objective=args.objective,
            group_step_size=args.group_step_size,
            groups=groups,
            group_adjustment=args.group_adjustment,
            group_ema_decay=args.group_ema_decay,
            group_temperature=args.group_temperature,
            group_loss_estimate=args.group_loss_estimate,
            group_weight_floor=args.group_weight_floor,
            group_sizes=sizes,
        )
        self._window_remaining = 0
        self._group_log: dict[str, float] = {}
        self._ple_values: list[float] = []
        # per group: summed NLL, scored tokens, scored rows (during an evaluation, then of the last one)
        self._eval_sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._last_eval_group_sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # metric_key_prefix -> `hf_egt.core.metrics.group_likelihood` of the last evaluation under that prefix
        self.group_evaluations: dict[str, dict] = {}

    def _finish_setup(self) -> None:
        reference_column = self.args.group_reference_column if self.args.group_reference != "none" else None
        self.data_collator = GroupCollator(
            self.data_collator, self.args.group_column, self.group_objective, reference_column=reference_column
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
        """The group sampler of `group_sampling` (`hf_egt.core.samplers`); the usual random sampler for `natural`."""
        if self.args.group_sampling == "natural":
            return super()._get_train_sampler(train_dataset)
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if len(train_dataset) != len(self._train_group_ids):
            raise ValueError(
                f"The train dataset has {len(train_dataset)} rows but had {len(self._train_group_ids)} when the "
                "trainer read its group labels: build the trainer with the dataset it trains on."
            )
        args = self.args
        return group_sampler(
            args.group_sampling,
            self._train_group_ids,
            self.group_objective.num_groups,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            step_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            exponent=args.group_sampling_exponent,
            batch_size=args.per_device_train_batch_size,
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
        return self.update_weights_from_last_eval()

    def update_weights_from_last_eval(self) -> torch.Tensor:
        """Update the group weights from the last evaluation's group losses, in `group_loss_unit`; returns them."""
        sums, tokens, sequences = self._last_eval_group_sums
        return self.update_weights_from_group_sums(
            sums, sequences if self.args.group_loss_unit == "sequence" else tokens
        )

    def update_weights_from_group_sums(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Update the group weights from an evaluation's per-group loss sums and counts (tokens, or sequences for
        `group_loss_unit="sequence"`); returns them."""
        weights = self.group_objective.observe(group_means(sums, counts), counts)
        for group, weight in zip(self.group_objective.groups, weights):
            self._group_log[f"group_weight/{group}"] = weight.item()
        return weights

    @property
    def group_update_prefix(self) -> str:
        """The metric key prefix under which the scheduled evaluation reports `group_update_dataset`."""
        return f"eval_{self.args.group_update_dataset}" if isinstance(self.eval_dataset, dict) else "eval"

    # -- columns ------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        kept = [self.args.group_column]
        if self.args.group_reference != "none":
            kept.append(self.args.group_reference_column)
        self._signature_columns = [*self._signature_columns, *(c for c in kept if c not in self._signature_columns)]

    # -- per-token losses ---------------------------------------------------------------------------------------------

    # Keywords of every forward that makes per-token losses (EGTSFTTrainer: no cache, TRL's entropy/accuracy stats).
    _token_loss_forward_kwargs: dict[str, Any] = {}

    def _token_losses(self, model, inputs: dict[str, Any]):
        """``(token_losses, mask, outputs)``: the one place that chooses between the chunked path (no full logits)
        and the trainer's full path (`_full_token_losses`: the logits, or TRL's fused head)."""
        if "labels" not in inputs:
            raise ValueError("EGTTrainer needs `labels` in every batch (-100 where a token must not count).")
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        chunked = self._chunked_token_losses_of(
            model, model_inputs, inputs["labels"], **self._token_loss_forward_kwargs
        )
        if chunked is not None:
            return chunked
        return self._full_token_losses(model, inputs)

    def _full_token_losses(self, model, inputs: dict[str, Any]):
        """``(token_losses, mask, outputs)`` without the chunked path; each trainer supplies its own."""
        raise NotImplementedError

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
            weights = [
                group_loss_weights(count_target_tokens(batch["labels"]), self.args.group_loss_unit)
                for batch in batch_samples
            ]
            self.group_objective.begin_window([batch[column] for batch in batch_samples], weights)
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
            if reference is not None:  # per-example token means, like `losses`: the same unit below
                reference = group_loss_inputs(reference.to(losses.device), counts, self.args.group_loss_unit)[0]
            losses, weights = group_loss_inputs(losses, counts, self.args.group_loss_unit)
            loss = self._training_loss(losses, group_ids, weights, reference)
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
            self.group_objective.begin_window([group_ids], [counts])
            self._window_remaining = 1
        loss = self.group_objective.window_loss(losses, group_ids, counts, reference_losses=reference).loss
        self._window_remaining -= 1
        if self._window_remaining == 0:
            self._end_window()
        # DDP and FSDP average gradients over processes; the window shares add up over processes.
        return loss * self.accelerator.num_processes

    def _end_window(self) -> None:
        try:
            window = self.group_objective.end_window(update=self.args.group_update_dataset is None)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"{error} (training step {self.state.global_step + 1}). The loss diverged: lower the learning rate or "
                "`group_step_size`, or check the data of that group."
            ) from error
        for group, loss, count, weight in zip(
            self.group_objective.groups, window.group_losses, window.group_counts, window.weights
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
            # Each row's (loss, tokens, group) from every process, through `gather_for_metrics`: the rows the
            # distributed sampler repeated to even out the shards are dropped, so every eval row counts once and the
            # sums are those of one process (issue 22); every process then holds the same sums.
            rows = torch.stack([losses.detach().double(), counts.double(), group_ids.double()], dim=1)
            rows = self.accelerator.gather_for_metrics(rows).cpu()
            ids, tokens_of_row = rows[:, 2].long(), rows[:, 1]
            sums, tokens = group_sums(rows[:, 0], ids, self.group_objective.num_groups, tokens_of_row)
            scored = torch.bincount(
                ids, weights=(tokens_of_row > 0).double(), minlength=self.group_objective.num_groups
            )
            for total, part in zip(self._eval_sums, (sums, tokens, scored)):
                total.add_(part)
        return (losses * counts).sum() / counts.sum().clamp_min(1)

    def evaluation_loop(self, *args, **kwargs):
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        num_groups = self.group_objective.num_groups
        self._eval_sums = tuple(torch.zeros(num_groups, dtype=torch.float64) for _ in range(3))
        try:
            output = super().evaluation_loop(*args, **kwargs)
            sums, tokens, sequences = self._eval_sums  # gathered from every process batch by batch (`_eval_loss`)
        finally:
            self._eval_sums = None
        self._last_eval_group_sums = (sums, tokens, sequences)
        likelihood = group_likelihood(sums, tokens, self.group_objective.groups, group_sequences=sequences)
        self.group_evaluations[prefix] = likelihood
        output.metrics.update(eval_metrics_from_likelihood(likelihood, prefix))
        return output

    def evaluate_groups(self, eval_dataset=None, metric_key_prefix: str = "eval") -> GroupRun:
        """`evaluate`, returned as the run summary that reports and model cards show (`hf_egt.core.metrics.GroupRun`,
        the fields `evaluate_causal_lm` returns too): per-group perplexity, each group's evaluated rows (`counts`),
        gap, ratio, worst and best group, and `overall`, the token-pooled perplexity of every evaluated token (not
        Trainer's `<prefix>_loss`, a mean over batches)."""
        self.evaluate(eval_dataset, metric_key_prefix=metric_key_prefix)
        if not any(self._last_eval_group_sums[1] > 0):
            raise ValueError(f"The evaluation scored no token of any group {self.group_objective.groups}.")
        return self.last_eval_run()

    # -- checkpoints --------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model` plus the group objective's state. Unlike `Trainer`, it never pushes: the one push is
        `push_to_hub()`, with the EGT card and the upload allow-list."""
        super().save_model(output_dir, _internal_call=True)
        if self.args.should_save:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            self.group_objective.save(os.path.join(output_dir, OBJECTIVE_STATE_NAME))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; a checkpoint (or `True`: the last one in `output_dir`) is checked, including its group
        objective state, before anything is loaded from it, then restored exactly (weights, optimizer, scheduler,
        RNG, data position and group weights)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_checkpoint(self.args.output_dir)
        if isinstance(resume_from_checkpoint, str):
            check_checkpoint(resume_from_checkpoint, self.group_objective.groups, self.group_objective.objective)
            self.group_objective.load(objective_state_path(resume_from_checkpoint))
        self._unmark_evaluation_preparation()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _unmark_evaluation_preparation(self) -> None:
        """An `evaluate()` before `train()` has `Trainer` prepare the bare model in evaluation mode (no DDP wrapper)
        and accelerate mark it prepared; `train()`'s `prepare` then returns it unwrapped, and each process trains on
        its own shard with no gradient averaging (issue 22: adapters 15 % apart after a base evaluation on 2
        processes). Clearing the mark lets training wrap it as it would without the evaluation."""
        model = self.model
        if (
            self.accelerator.num_processes > 1
            and self.model_wrapped is model
            and getattr(model, "_is_accelerate_prepared", False)
            and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        ):
            del model._is_accelerate_prepared
            if model in self.accelerator._models:
                self.accelerator._models.remove(model)

    def _log_under_output_dir(self) -> None:
        """TensorBoard logs go to `output_dir/runs/...`: `TensorBoardCallback` picks that folder only at
        `on_train_begin`, and an `evaluate()` before `train()` would create its writer in `./runs`."""
        from transformers.integrations import TensorBoardCallback
        from transformers.integrations.integration_utils import default_logdir

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())

    # -- the last evaluation as a run ----------------------------------------------------------------------------------

    def last_eval_run(self) -> GroupRun:
        """The last evaluation as a `GroupRun` (a card column): per-group perplexity of the groups it scored, their
        evaluated rows, gap, worst group and `overall`, the perplexity of all evaluated tokens pooled; plus
        `loss_per_group` and `overall_loss` (NLL per token)."""
        if self._last_eval_group_sums is None:
            raise ValueError("No evaluation yet: call `evaluate()` first.")
        sums, tokens, sequences = self._last_eval_group_sums
        likelihood = group_likelihood(sums, tokens, self.group_objective.groups, group_sequences=sequences)
        scored = [g for g, count in zip(self.group_objective.groups, tokens.tolist()) if count > 0]
        rows = dict(zip(self.group_objective.groups, sequences.tolist()))
        run = group_run(
            {group: likelihood["perplexity"]["per_group"][group] for group in scored},
            {group: rows[group] for group in scored},
            likelihood["perplexity"]["overall"],
        )
        run["loss_per_group"] = {group: likelihood["nll"]["per_group"][group] for group in scored}
        run["overall_loss"] = likelihood["nll"]["overall"]
        run["sequence_nll"] = likelihood["sequence_nll"]  # NLL per row: comparable across groups of parallel texts
        return run


# ---------------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------------


class EGTTrainer(EGTHubMixin, EGTTrainerMixin, Trainer):
    """[`~transformers.Trainer`] for causal LMs with a group objective (min-max by default) over `group_column`.

    Args:
        model: a causal LM (`AutoModelForCausalLM`), a `PeftModel`, or a Hub id / folder to load one from.
        args: an [`EGTConfig`].
        train_dataset, eval_dataset: datasets with `input_ids` (or raw text in `text_column`) and `group_column`;
            `eval_dataset` may be a dict of them.
        processing_class: the tokenizer (pads batches; tokenizes raw text).
        peft_config: a `peft` config (e.g. `LoraConfig`, or hf-egt's `HyperLoRAConfig`) to wrap `model` with.
        data_collator: defaults to [`DataCollatorForCausalLM`] with the
        tokenizer's pad token.
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
            data_collator = DataCollatorForCausalLM(pad_token_id=pad_token_id_of(processing_class))
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
                self.group_objective.groups,
                None,
                {metric_key_prefix: dataset_group_labels(eval_dataset, args.group_column, metric_key_prefix)},
            )
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _full_token_losses(self, model, inputs: dict[str, Any]):
        """A forward without labels (no loss inside the model) and one per-token cross-entropy on its logits."""
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = output_field(outputs, "logits")
        if logits is None:
            logits = outputs[0]
        token_losses, mask = causal_lm_token_losses(logits, inputs["labels"])
        return token_losses, mask, outputs
