"""Shared heads that emit the LoRA factors of every adapted layer from one context vector.

Text-to-LoRA style: a trunk mixes the context with a learned per-layer (depth) embedding and a per-module-type
embedding; one low-rank head per module type (layers of one type share a head) emits the flattened A and B. The
parameter count grows with depth only by one `embedding_dim` vector per layer, unlike torchhyper's dense heads (one
`Linear(hidden, numel(weight))` per weight).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoRASlot:
    """One adapted layer: where its generated factors go and which head/embeddings produce them."""

    module_name: str  # name of the peft LoRA layer inside the peft model
    group: str  # module type + shapes: layers sharing it share a head
    depth: int  # position among the layers of its group (the layer index for a transformer)
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]


def generated_parameters(slots: list[LoRASlot]) -> int:
    """How many LoRA entries the slots hold (A and B of every adapted layer): a plain LoRA's trainable count."""
    return sum(math.prod(slot.a_shape) + math.prod(slot.b_shape) for slot in slots)


def group_key(module_name: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> str:
    """Module type (last name component) and factor shapes, as a valid `nn.ModuleDict` key."""
    leaf = re.sub(r"\W", "_", module_name.rsplit(".", 1)[-1])
    return f"{leaf}__{'x'.join(map(str, a_shape))}__{'x'.join(map(str, b_shape))}"


def slots_from_shapes(modules: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> list[LoRASlot]:
    """`(module_name, a_shape, b_shape)` in model order -> slots, numbering depth within each group."""
    counts: dict[str, int] = {}
    slots = []
    for name, a_shape, b_shape in modules:
        key = group_key(name, a_shape, b_shape)
        slots.append(LoRASlot(name, key, counts.get(key, 0), tuple(a_shape), tuple(b_shape)))
        counts[key] = counts.get(key, 0) + 1
    return slots


class ModuleTypeHead(nn.Module):
    """Trunk features -> (A, B) for every layer of one module type: a shared bottleneck, then one output per factor.

    At initialisation B is exactly zero (weight and bias), so the adapted model starts as the base model, as with
    peft's LoRA; A's bias is peft's default A initialisation and its weight is small, so A depends on the context
    from the start and the gradient into B is not dead.
    """

    def __init__(self, hidden_size: int, head_rank: int, a_shape: tuple[int, ...], b_shape: tuple[int, ...]):
        super().__init__()
        self.a_shape, self.b_shape = tuple(a_shape), tuple(b_shape)
        a_numel, b_numel = math.prod(a_shape), math.prod(b_shape)
        fan_in = a_numel // a_shape[0]
        self.bottleneck = nn.Linear(hidden_size, head_rank)
        self.out_a = nn.Linear(head_rank, a_numel)
        self.out_b = nn.Linear(head_rank, b_numel)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(fan_in)
            self.out_a.bias.uniform_(-bound, bound)
            self.out_a.weight.normal_(0.0, bound / math.sqrt(head_rank))
            self.out_b.weight.zero_()
            self.out_b.bias.zero_()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.bottleneck(features)
        count = features.shape[0]
        return self.out_a(hidden).view(count, *self.a_shape), self.out_b(hidden).view(count, *self.b_shape)


class LoRAGenerator(nn.Module):
    """context -> LoRA factors of all slots, one vectorised trunk/head call per module type."""

    def __init__(self, slots: list[LoRASlot], context_dim: int, embedding_dim: int, hidden_size: int, head_rank: int):
        super().__init__()
        if not slots:
            raise ValueError("No LoRA layers to generate: check `target_modules`.")
        self.slots = list(slots)
        self.groups = sorted({slot.group for slot in slots})
        max_depth = max(slot.depth for slot in slots) + 1
        self.layer_embedding = nn.Embedding(max_depth, embedding_dim)
        self.type_embedding = nn.Embedding(len(self.groups), embedding_dim)
        nn.init.normal_(self.layer_embedding.weight, std=1.0)
        nn.init.normal_(self.type_embedding.weight, std=1.0)
        self.trunk = nn.Sequential(
            nn.Linear(context_dim + 2 * embedding_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
        )
        first = {}
        for slot in slots:
            first.setdefault(slot.group, slot)
        self.heads = nn.ModuleDict(
            {g: ModuleTypeHead(hidden_size, head_rank, first[g].a_shape, first[g].b_shape) for g in self.groups}
        )
        for index, group in enumerate(self.groups):
            members = [slot for slot in slots if slot.group == group]
            self.register_buffer(f"_depth_{index}", torch.tensor([s.depth for s in members]), persistent=False)

    def forward(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(context_dim,)` -> `{"<module_name>.lora_A": A, "<module_name>.lora_B": B}` for every slot."""
        out = {}
        for index, group in enumerate(self.groups):
            depth = getattr(self, f"_depth_{index}")
            type_index = torch.full_like(depth, index)
            features = torch.cat(
                [context.expand(depth.shape[0], -1), self.layer_embedding(depth), self.type_embedding(type_index)],
                dim=-1,
            )
            a, b = self.heads[group](self.trunk(features))
            members = [slot for slot in self.slots if slot.group == group]
            for position, slot in enumerate(members):
                out[f"{slot.module_name}.lora_A"] = a[position]
                out[f"{slot.module_name}.lora_B"] = b[position]
        return out
