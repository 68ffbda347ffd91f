"""Wrapping a model with its adapter: any peft config (`LoraConfig`, hf-egt's `HyperLoRAConfig`) gives a `PeftModel`."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def wrap_model(model, peft_config, seed: int | None = None):
    """Wrap `model` with `peft_config` through `peft.get_peft_model` (a `HyperLoRAConfig` included: it is a peft
    method). Returns `model` unchanged without a config.

    With `seed`, the random initialisation of the new adapter weights is seeded first (as `Trainer` seeds before
    `model_init`), so a run does not depend on what consumed the global RNG before it.
    """
    if peft_config is None:
        return model
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError("`model` is already a `PeftModel`: pass it without `peft_config`, or pass the base model.")
    return get_peft_model(model, peft_config)
