"""Hypernetwork LoRA adapter (MADness paper, arXiv 2405.13977) with the PLE self-consumption penalty."""

from hf_egt.integrations.hyper.config import HyperLoRAConfig
from hf_egt.integrations.hyper.model import HyperLoRAModel
from hf_egt.integrations.hyper.ple import context_sensitivity, is_constant_hypernetwork, ple_penalty

__all__ = ["HyperLoRAConfig", "HyperLoRAModel", "context_sensitivity", "is_constant_hypernetwork", "ple_penalty"]
