"""Configuration of the HyperLoRA peft method: a ``peft.PeftConfig`` subclass, saved and loaded by peft itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

# The peft type of the method (`adapter_config.json`'s "peft_type"). peft's enum `PeftType` is closed: a method outside
# peft cannot be one of its members (`peft.utils.peft_types.register_peft_method` refuses other names), so it is the
# plain string, which peft's mappings (dicts keyed by the `str` enum) look up the same way.
HYPER_LORA = "HYPER_LORA"
# Where `hf-egt train --hyper` and `train-diffusion --hyper` save the hypernetwork, beside the plain LoRA it exports.
HYPERNETWORK_FOLDER = "hypernetwork"
SET_ENCODER_INPUTS = ("auto", "input_embeddings", "last_hidden", "unet_pooled")
PLE_REDUCTIONS = ("mean", "sum")
POSITIVE_INTEGERS = (
    "ple_every",
    "unet_pool_size",
    "set_encoder_hidden",
    "context_dim",
    "embedding_dim",
    "hidden_size",
    "head_rank",
)


@dataclass
class HyperLoRAConfig(PeftConfig):
    """Settings of [`HyperLoRAModel`]: which layers get LoRA factors, and the hypernetwork that emits them.

    The LoRA fields (`r`, `lora_alpha`, `target_modules`, `lora_dropout`) mean what they mean in `peft.LoraConfig`:
    the generated weights are plugged into a frozen peft LoRA model, and `export_peft` writes a plain peft adapter.
    Saved as `adapter_config.json` by peft (`save_pretrained` / `from_pretrained`); after `import hf_egt`,
    `peft.get_peft_model(model, HyperLoRAConfig(...))` and `PeftModel.from_pretrained` build a [`HyperLoRAModel`].
    Set `task_type="CAUSAL_LM"` for a causal LM (as for `LoraConfig`): it selects `PeftModelForCausalLM`, whose
    forward runs the hypernetwork.
    """

    r: int = field(default=8, metadata={"help": "LoRA rank of every adapted layer."})
    lora_alpha: float = field(
        default=16, metadata={"help": "LoRA scaling numerator (the update is `lora_alpha / r * B @ A`)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (or a regex) peft adapts, e.g. `['q_proj', 'v_proj']` or `['to_q', 'conv1']`."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input (peft semantics)."})
    set_encoder_input: str = field(
        default="auto",
        metadata={
            "help": "How a per-example embedding is taken from the frozen base model: `input_embeddings` (causal LMs: "
            "masked mean of the input token embeddings, free), `last_hidden` (causal LMs: masked mean of the last "
            "hidden state, one extra no-grad forward with adapters off), `unet_pooled` (diffusers UNets: the images "
            "average-pooled to `unet_pool_size`²), `auto` (`input_embeddings` for language models, `unet_pooled` for "
            "UNets). A custom callable can be passed to `HyperLoRAModel(embed_fn=...)` instead.",
            "choices": list(SET_ENCODER_INPUTS),
        },
    )
    unet_pool_size: int = field(default=4, metadata={"help": "Side of the pooled image for `unet_pooled`."})
    set_encoder_hidden: int = field(
        default=128, metadata={"help": "Width of the DeepSets per-example network h1 and of the context network h2."}
    )
    context_dim: int = field(default=64, metadata={"help": "Size of the set encoding (the context vector)."})
    embedding_dim: int = field(
        default=32, metadata={"help": "Size of the learned per-layer and per-module-type embeddings."}
    )
    hidden_size: int = field(
        default=128,
        metadata={"help": "Width of the shared trunk that mixes context, layer and module-type embeddings."},
    )
    head_rank: int = field(
        default=32, metadata={"help": "Bottleneck of each module-type head (Text-to-LoRA style low-rank output layer)."}
    )
    match_lora_parameters: bool = field(
        default=False,
        metadata={
            "help": "Choose `head_rank` (overriding it) as the largest whose hypernetwork has at most as many "
            "trainable parameters as the plain LoRA it generates (same `r`, same modules): for comparisons with "
            "LoRA at an equal parameter budget. The chosen `head_rank` is saved in the config."
        },
    )
    ple_weight: float = field(
        default=0.0,
        metadata={"help": "λ of the self-consumption (PLE) penalty λ·D(H(Y), H(X)); 0 disables it (paper: 0.1)."},
    )
    ple_every: int = field(
        default=1,
        metadata={
            "help": "Draw fresh synthetic samples Y every this many training forwards; in between, the cached (X, Y) "
            "embeddings are reused with the current hypernetwork (no generation)."
        },
    )
    ple_reduction: str = field(
        default="mean",
        metadata={
            "help": "`mean`: mean squared difference over all generated entries (independent of model size); `sum`: "
            "the paper's squared Euclidean norm.",
            "choices": list(PLE_REDUCTIONS),
        },
    )
    ple_detach_real: bool = field(
        default=True,
        metadata={"help": "Stop the penalty's gradient through H(X) (the real-data estimate is the target)."},
    )
    ple_prompt_length: int = field(
        default=4, metadata={"help": "Causal LMs: tokens of each real example kept as the prompt of its continuation."}
    )
    ple_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Causal LMs: length of the sampled continuation (None: the batch's remaining length)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = HYPER_LORA
        if self.r < 1:
            raise ValueError(f"`r` must be a positive integer, got {self.r}.")
        if self.set_encoder_input not in SET_ENCODER_INPUTS:
            raise ValueError(
                f"`set_encoder_input` must be one of {SET_ENCODER_INPUTS}, got {self.set_encoder_input!r}."
            )
        if self.ple_reduction not in PLE_REDUCTIONS:
            raise ValueError(f"`ple_reduction` must be one of {PLE_REDUCTIONS}, got {self.ple_reduction!r}.")
        if self.ple_weight < 0:
            raise ValueError(f"`ple_weight` must be >= 0, got {self.ple_weight}.")
        for name in POSITIVE_INTEGERS:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)


def option_name(field_name: str) -> str:
    """The command-line spelling of a `HyperLoRAConfig` field: `ple_*` as is, the others under `hyper_`."""
    return field_name if field_name.startswith("ple_") else f"hyper_{field_name}"


def config_values(options: Any, names: Sequence[str]) -> dict:
    """The `HyperLoRAConfig` keyword arguments held by `options` (an object with one attribute per
    `option_name(field)`, e.g. what `hf_egt.apps.arguments.add_config_arguments(parser, names)` parsed)."""
    return {name: getattr(options, option_name(name)) for name in names}
