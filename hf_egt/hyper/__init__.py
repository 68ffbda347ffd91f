"""Hypernetwork LoRA adapter (MADness paper, arXiv 2405.13977) with the PLE self-consumption penalty."""

from .config import HyperLoRAConfig
from .model import HyperLoRAModel
from .ple import context_sensitivity, is_constant_hypernetwork, ple_penalty

__all__ = ["HyperLoRAConfig", "HyperLoRAModel", "context_sensitivity", "is_constant_hypernetwork", "ple_penalty"]
