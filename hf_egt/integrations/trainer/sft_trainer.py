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
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from hf_egt.integrations.trainer.egt_trainer import EGTTrainerMixin
from hf_egt.integrations.trainer.sft_config import EGTSFTConfig


class EGTSFTTrainer(EGTTrainerMixin, SFTTrainer):
    """[`~trl.SFTTrainer`] with a group objective (min-max by default) over `args.group_column`.

    Takes the arguments of [`~trl.SFTTrainer`]; `args` must be an [`EGTSFTConfig`]. `peft_config` is any peft
    config, `hf_egt.integrations.hyper.HyperLoRAConfig` included (TRL wraps the model with `get_peft_model`).
    """

    def __init__(self, model, args: EGTSFTConfig | None = None, train_dataset=None, eval_dataset=None, **kwargs):
        if args is None:
            args = EGTSFTConfig(output_dir="egt-sft-output")
        self._setup_objective(args, train_dataset, eval_dataset)
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        self._finish_setup()

    def _token_losses(self, model, inputs):
        """Per-token losses from the chunked path (else TRL's fused LM head), and TRL's entropy / token-accuracy
        metrics."""
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        chunked = self._chunked_token_losses_of(
            model, model_inputs, inputs["labels"], use_cache=False, token_loss_stats=True
        )
        if chunked is not None:
            token_losses, mask, outputs = chunked
        else:
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
            token_losses, mask = -outputs.log_probs, outputs.label_mask
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
