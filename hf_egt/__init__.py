"""hf-egt: Equalized Generative Treatment for Hugging Face models.

Names are imported lazily so that the core (the group objective, ``EGTTrainer``, the hypernetwork) imports without
the optional stacks (diffusers, trl, evaluate, datasets) that only some features need.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    # group objective
    "GroupObjective": "core.objective",
    "GroupObjectiveOutput": "core.objective",
    "GroupLabels": "core.objective",
    "OBJECTIVE_MODES": "core.objective",
    # language-model training
    "EGTConfig": "integrations.trainer",
    "EGTTrainer": "integrations.trainer",
    "EGTSFTConfig": "integrations.trainer.sft_trainer",
    "EGTSFTTrainer": "integrations.trainer.sft_trainer",
    # hypernetwork adapter
    "HyperLoRAConfig": "integrations.hyper",
    "HyperLoRAModel": "integrations.hyper",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        module = importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_egt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
