"""``EGTSFTTrainer``: TRL's ``SFTTrainer`` (conversational data, completion-only loss) with the group objective.

It shares everything with [`hf_egt.EGTTrainer`] through [`hf_egt.integrations.trainer.EGTTrainerMixin`] and only
supplies the per-token losses: from the same chunked path as ``EGTTrainer`` (``hf_egt.integrations.output_head``, which
also applies a LoRA'd LM head's adapter), else from TRL's fused LM head (``model(..., fused_lm_head=True)``); neither
materialises the full logits. TRL drops extra columns in three places; the group column is kept in each:

- ``_set_signature_columns_if_needed``: the mixin appends ``group_column`` to TRL's signature columns;
- TRL's collator only reads ``input_ids``/``labels``: ``GroupCollator`` takes the group labels out before it and puts
  their ids back into the batch;
- packing's ``select_columns(["input_ids", "labels"])`` (and padding-free batches) mix several groups in one row: they
  are refused with a clear error.

On conversational ``messages`` data the loss covers the assistant turns only (``EGTSFTConfig.assistant_only_loss``,
default ``None``: on). TRL finds assistant tokens through ``{% generation %}`` markers, which most chat templates lack;
here, as TRL does for prompt-completion data, each assistant turn is located by rendering the template on the
conversation up to that turn: the tokens after the rendering of the turns before it (with the generation prompt)
and up to the rendering that includes it (its content and end-of-turn tokens) are the assistant's
(``assistant_token_mask``). The dataset reaches TRL tokenized, with an ``assistant_masks`` column.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from trl import SFTTrainer

from hf_egt.integrations.trainer.egt_trainer import EGTTrainerMixin
from hf_egt.integrations.trainer.hub_mixin import EGTHubMixin
from hf_egt.integrations.trainer.sft_config import EGTSFTConfig

logger = logging.getLogger(__name__)


def _render(tokenizer, messages: Sequence[dict], **kwargs) -> list[int]:
    """The token ids of ``messages`` rendered by the tokenizer's chat template."""
    if not messages:
        return []
    encoded = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kwargs)
    ids = encoded["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def _common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def assistant_token_mask(tokenizer, messages: Sequence[dict], **template_kwargs) -> tuple[list[int], list[int]]:
    """``(input_ids, mask)`` of a conversation: its rendering by the chat template, and 1 on the tokens of every
    assistant turn (its content and the end-of-turn tokens the template adds), 0 elsewhere.

    A turn's tokens are those after the rendering of the turns before it with the generation prompt, up to the
    rendering that includes it, read off the whole conversation's rendering: no ``{% generation %}`` markers needed.
    ``template_kwargs`` (``tools``...) go to every ``apply_chat_template`` call.
    """
    input_ids = _render(tokenizer, messages, **template_kwargs)
    mask = [0] * len(input_ids)
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True, **template_kwargs)
        through = _render(tokenizer, messages[: index + 1], **template_kwargs)
        start = _common_prefix_length(before, through)
        end = _common_prefix_length(through, input_ids)  # the whole turn unless the template renders it differently
        if end < len(through):
            logger.warning(
                "The chat template renders the conversation up to assistant turn %d differently from the whole "
                "conversation; that turn is trained up to where the two renderings diverge.",
                index,
            )
        for position in range(start, end):
            mask[position] = 1
    return input_ids, mask


def assistant_only_dataset(dataset, tokenizer, name: str):
    """``dataset`` with its ``messages`` tokenized into ``input_ids`` and ``assistant_masks`` (TRL then builds labels
    that cover the assistant tokens only); the other columns (the group's) are kept. A conversation without an
    assistant token is a ``ValueError`` naming the row."""

    def tokenize(example: dict, index: int) -> dict:
        kwargs = dict(example.get("chat_template_kwargs") or {})
        if example.get("tools"):
            kwargs["tools"] = example["tools"]
        input_ids, mask = assistant_token_mask(tokenizer, example["messages"], **kwargs)
        if 1 not in mask:
            raise ValueError(
                f"`assistant_only_loss`: row {index} of the {name} dataset has no assistant turn to train on; add "
                "one, or set `assistant_only_loss=False` to train on every token."
            )
        return {"input_ids": input_ids, "assistant_masks": mask}

    return dataset.map(tokenize, with_indices=True, remove_columns=["messages"])


def _is_messages_dataset(dataset) -> bool:
    columns = getattr(dataset, "column_names", None) or []
    return "messages" in columns and "input_ids" not in columns


class EGTSFTTrainer(EGTHubMixin, EGTTrainerMixin, SFTTrainer):
    """[`~trl.SFTTrainer`] with a group objective (min-max by default) over `args.group_column`.

    Takes the arguments of [`~trl.SFTTrainer`]; `args` must be an [`EGTSFTConfig`]. `peft_config` is any peft
    config, `hf_egt.integrations.hyper.HyperLoRAConfig` included (TRL wraps the model with `get_peft_model`).
    """

    def __init__(
        self,
        model,
        args: EGTSFTConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ):
        if args is None:
            args = EGTSFTConfig(output_dir="egt-sft-output")
        self._setup_objective(args, train_dataset, eval_dataset)
        assistant_only = getattr(args, "assistant_only_loss", False)
        datasets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
        if assistant_only is not False and any(_is_messages_dataset(d) for d in datasets if d is not None):
            if processing_class is None:  # as TRL: the tokenizer of the model's id
                from transformers import AutoTokenizer

                model_id = model if isinstance(model, str) else model.config._name_or_path
                processing_class = AutoTokenizer.from_pretrained(model_id)

            def masked(dataset, name: str):
                return (
                    assistant_only_dataset(dataset, processing_class, name)
                    if _is_messages_dataset(dataset)
                    else dataset
                )

            train_dataset = masked(train_dataset, "train") if train_dataset is not None else None
            if isinstance(eval_dataset, dict):
                eval_dataset = {key: masked(value, f"eval {key!r}") for key, value in eval_dataset.items()}
            elif eval_dataset is not None:
                eval_dataset = masked(eval_dataset, "eval")
        elif assistant_only is True and train_dataset is not None:
            raise ValueError(
                "`assistant_only_loss=True` needs conversational data (a `messages` column); the train dataset has "
                f"columns {list(getattr(train_dataset, 'column_names', None) or [])}. Leave it `None` (the default)."
            )
        # TRL's own assistant masks need `{% generation %}` markers: the masks are built above instead
        trl_args = copy.copy(args)
        trl_args.assistant_only_loss = False
        super().__init__(
            model,
            args=trl_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.args.assistant_only_loss = assistant_only
        self._finish_setup()

    _token_loss_forward_kwargs = {"use_cache": False, "token_loss_stats": True}

    def _full_token_losses(self, model, inputs):
        """TRL's fused LM head: per-token log-probabilities without the full logits."""
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        return -outputs.log_probs, outputs.label_mask, outputs

    def _token_losses(self, model, inputs):
        """The mixin's per-token losses (chunked, else TRL's fused head), and TRL's entropy / token-accuracy metrics."""
        token_losses, mask, outputs = super()._token_losses(model, inputs)
        mode = "train" if model.training else "eval"
        num_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
        if outputs.entropy is not None:
            entropy = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
            self._metrics[mode]["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
        if outputs.is_top1 is not None:
            correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
        return token_losses, mask, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if not return_outputs:
            return loss
        # The fused head makes no logits; like TRL, recompute them for `compute_metrics` only when asked.
        dropped = (self.args.group_column, "labels")
        with torch.no_grad():
            outputs = model(**{k: v for k, v in inputs.items() if k not in dropped})
        return loss, outputs
