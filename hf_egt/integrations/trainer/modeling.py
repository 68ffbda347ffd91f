"""Wrapping a model with its adapter: a peft config gives a `PeftModel`, a `HyperLoRAConfig` a `HyperLoRAModel`."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def wrap_model(model, peft_config, seed: int | None = None):
    """Wrap `model` with `peft_config`: a `hf_egt.integrations.hyper.HyperLoRAConfig` gives a `HyperLoRAModel`, any
    other peft config a `PeftModel`. Returns `model` unchanged without a config.

    With `seed`, the random initialisation of the new adapter weights is seeded first (as `Trainer` seeds before
    `model_init`), so a run does not depend on what consumed the global RNG before it.
    """
    if peft_config is None:
        return model
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    try:  # optional: the hypernetwork adapter lives in its own module
        from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel
    except ImportError:
        HyperLoRAConfig = HyperLoRAModel = None
    if HyperLoRAConfig is not None and isinstance(peft_config, HyperLoRAConfig):
        return HyperLoRAModel(model, peft_config)
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError("`model` is already a `PeftModel`: pass it without `peft_config`, or pass the base model.")
    return get_peft_model(model, peft_config)
