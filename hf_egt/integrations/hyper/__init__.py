"""HyperLoRA, a peft method (MADness paper, arXiv 2405.13977): a hypernetwork generates the LoRA factors from a set of
examples, with the PLE self-consumption penalty. Importing this package registers the method with peft."""

from hf_egt.integrations.hyper.callbacks import FixedContextCallback, context_batch, fix_context, tokenize_context_set
from hf_egt.integrations.hyper.config import HYPER_LORA, HyperLoRAConfig
from hf_egt.integrations.hyper.model import HyperLoRAModel, register_with_peft
from hf_egt.integrations.hyper.ple import context_sensitivity, is_constant_hypernetwork, ple_penalty

register_with_peft()

__all__ = [
    "FixedContextCallback",
    "HYPER_LORA",
    "HyperLoRAConfig",
    "HyperLoRAModel",
    "context_batch",
    "context_sensitivity",
    "fix_context",
    "is_constant_hypernetwork",
    "ple_penalty",
    "register_with_peft",
    "tokenize_context_set",
]
