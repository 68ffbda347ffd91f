"""`FixedContextCallback`: evaluate a HyperLoRA model during training as the one adapter it will export."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import TrainerCallback


def context_batch(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """``texts`` tokenized as one padded batch (truncated to ``max_length`` tokens): a set of examples whose
    encoding fixes a HyperLoRA model's context (``fix_context``, ``FixedContextCallback``)."""
    return dict(tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length))


def fix_context(model: torch.nn.Module, set_batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Fix ``model``'s (a HyperLoRA model, bare or inside a ``PeftModel``) inference context to the encoding of
    ``set_batch`` (a tokenized batch, moved to the hypernetwork's device); returns the context."""
    device = next(model.hypernetwork.parameters()).device
    training = model.training
    model.eval()  # the set encoding of a fixed context is an inference-time quantity (no dropout)
    try:
        with torch.no_grad():
            return model.set_context(**{key: value.to(device) for key, value in set_batch.items()})
    finally:
        model.train(training)


class FixedContextCallback(TrainerCallback):
    """Before every evaluation and checkpoint, fix the HyperLoRA model's context to the encoding of ``set_batch``.

    Without a fixed context, a HyperLoRA model in evaluation generates each batch's LoRA weights from that batch's
    own (held-out) rows, so the evaluations during training measure neither one adapter nor the one that is
    exported. With it, every evaluation measures the adapter that ``set_context(**set_batch)`` gives at that step,
    and each checkpoint holds that context (so ``load_best_model_at_end`` restores the adapter that was measured).
    Training forwards are unaffected: they always encode their own batch.
    """

    def __init__(self, set_batch: Mapping[str, torch.Tensor]):
        if "input_ids" not in set_batch:
            raise ValueError(f"`set_batch` must be a tokenized batch (with `input_ids`), got keys {sorted(set_batch)}.")
        self.set_batch = dict(set_batch)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate or control.should_save:
            fix_context(model, self.set_batch)
