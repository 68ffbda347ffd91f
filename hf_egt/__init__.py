"""hf-egt: Equalized Generative Treatment for Hugging Face models.

Names are imported lazily so that the core (the group objective, ``EGTTrainer``, the hypernetwork) imports without
the optional stacks (diffusers, trl, evaluate, datasets) that only some features need; the ``TYPE_CHECKING`` block
imports every lazy name for IDEs and type checkers. The HyperLoRA peft method is registered with peft when peft is
imported (``hf_egt.integrations.peft_registration``), so ``import hf_egt`` itself stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hf_egt.integrations.peft_registration import register_when_peft_is_imported

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    # group objective
    "GroupObjective": "core.objective",
    "GroupObjectiveOutput": "core.objective",
    "GroupLabels": "core.objective",
    "OBJECTIVE_MODES": "core.objective",
    # measurement: per-group divergences between real and generated samples
    "egt_report": "core.metrics",
    "estimate": "core.metrics",
    "proportion_criteria": "core.metrics",
    "report_table": "core.metrics",
    "likelihood_report": "core.metrics",
    "DIVERGENCES": "core.metrics",
    "QUANTIZED": "core.metrics",
    "RECOMMENDED_TEXT_DIVERGENCE": "core.metrics",
    # measurement of a causal LM: generate per group, embed, report
    "evaluate_causal_lm": "integrations.evaluation",
    "embedding_egt": "integrations.evaluation",
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

if TYPE_CHECKING:
    from hf_egt.core.metrics import (  # noqa: F401 (seen by type checkers; loaded lazily at run time)
        DIVERGENCES,
        QUANTIZED,
        RECOMMENDED_TEXT_DIVERGENCE,
        egt_report,
        estimate,
        likelihood_report,
        proportion_criteria,
        report_table,
    )
    from hf_egt.core.objective import OBJECTIVE_MODES, GroupLabels, GroupObjective, GroupObjectiveOutput  # noqa: F401
    from hf_egt.integrations.evaluation import embedding_egt, evaluate_causal_lm  # noqa: F401
    from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel  # noqa: F401
    from hf_egt.integrations.trainer import EGTConfig, EGTTrainer  # noqa: F401
    from hf_egt.integrations.trainer.sft_trainer import EGTSFTConfig, EGTSFTTrainer  # noqa: F401


register_when_peft_is_imported()  # HyperLoRA becomes a peft method once peft is imported


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        module = importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_egt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
