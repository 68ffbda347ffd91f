"""`FixedContextCallback`: evaluate a HyperLoRA model during training as the one adapter it will export.

The *context set* is the set of examples whose encoding is a HyperLoRA model's context; its size is the *context
size* (`hf-egt train --hyper_context_size`, `hf-egt train-diffusion --hyper_context_size`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import TrainerCallback

from hf_egt.core.vocabulary import renamed_attribute, renamed_keywords, warn_renamed


def tokenize_context_set(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """``texts`` tokenized as one padded batch (truncated to ``max_length`` tokens): a context set, whose encoding
    fixes a HyperLoRA model's context (``fix_context``, ``FixedContextCallback``)."""
    return dict(tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length))


def context_batch(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Deprecated name of :func:`tokenize_context_set` (removed in the release ``hf_egt.core.vocabulary`` names)."""
    warn_renamed("`context_batch`", "`tokenize_context_set`", "hf_egt.integrations.hyper")
    return tokenize_context_set(tokenizer, texts, max_length)


@renamed_keywords({"set_batch": "context_set"})
def fix_context(model: torch.nn.Module, context_set: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Fix ``model``'s (a HyperLoRA model, bare or inside a ``PeftModel``) inference context to the encoding of
    ``context_set`` (a tokenized batch, moved to the hypernetwork's device); returns the context."""
    device = next(model.hypernetwork.parameters()).device
    training = model.training
    model.eval()  # the set encoding of a fixed context is an inference-time quantity (no dropout)
    try:
        with torch.no_grad():
            return model.set_context(**{key: value.to(device) for key, value in context_set.items()})
    finally:
        model.train(training)


class FixedContextCallback(TrainerCallback):
    """Before every evaluation and checkpoint, fix the HyperLoRA model's context to the encoding of ``context_set``.

    Without a fixed context, a HyperLoRA model in evaluation generates each batch's LoRA weights from that batch's
    own (held-out) rows, so the evaluations during training measure neither one adapter nor the one that is
    exported. With it, every evaluation measures the adapter that ``set_context(**context_set)`` gives at that step,
    and each checkpoint holds that context (so ``load_best_model_at_end`` restores the adapter that was measured).
    Training forwards are unaffected: they always encode their own batch.
    """

    set_batch = renamed_attribute("set_batch", "context_set", "FixedContextCallback")

    @renamed_keywords({"set_batch": "context_set"})
    def __init__(self, context_set: Mapping[str, torch.Tensor]):
        if "input_ids" not in context_set:
            raise ValueError(
                f"`context_set` must be a tokenized batch (with `input_ids`), got keys {sorted(context_set)}."
            )
        self.context_set = dict(context_set)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate or control.should_save:
            fix_context(model, self.context_set)
