"""Configuration of the hypernetwork LoRA adapter (a peft-like dataclass, saved as JSON)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

CONFIG_NAME = "hyper_config.json"

SET_ENCODER_INPUTS = ("auto", "input_embeddings", "last_hidden", "unet_pooled")
PLE_REDUCTIONS = ("mean", "sum")


@dataclass
class HyperLoRAConfig:
    """Settings of [`HyperLoRAModel`]: which layers get LoRA factors, and the hypernetwork that emits them.

    The LoRA fields (`r`, `lora_alpha`, `target_modules`, `lora_dropout`) mean what they mean in `peft.LoraConfig`:
    the generated weights are plugged into a frozen peft LoRA model, and `export_peft` writes a plain peft adapter.

    Args:
        r: LoRA rank of every adapted layer.
        lora_alpha: LoRA scaling numerator (the update is `lora_alpha / r * B @ A`).
        target_modules: module names (or a regex) peft adapts, e.g. `["q_proj", "v_proj"]` or `["to_q", "conv1"]`.
        lora_dropout: dropout on the LoRA branch's input (peft semantics).
        set_encoder_input: how a per-example embedding is taken from the frozen base model. `"input_embeddings"`
            (causal LMs): masked mean of the input token embeddings, free (a table lookup). `"last_hidden"` (causal
            LMs): masked mean of the base model's last hidden state, one extra no-grad forward with adapters off.
            `"unet_pooled"` (diffusers UNets): the batch of images average-pooled to `unet_pool_size`². `"auto"`
            picks `"input_embeddings"` for language models and `"unet_pooled"` for UNets. A custom callable can be
            passed to `HyperLoRAModel(embed_fn=...)` instead.
        unet_pool_size: side of the pooled image for `"unet_pooled"`.
        set_encoder_hidden: width of the DeepSets per-example network h1 and of the context network h2.
        context_dim: size of the set encoding (the context vector).
        embedding_dim: size of the learned per-layer and per-module-type embeddings.
        hidden_size: width of the shared trunk that mixes context, layer and module-type embeddings.
        head_rank: bottleneck of each module-type head (Text-to-LoRA style low-rank output layer).
        ple_weight: λ of the self-consumption (PLE) penalty λ·D(H(Y), H(X)); 0 disables it (paper: 0.1).
        ple_every: draw fresh synthetic samples Y every this many training forwards; in between, the cached
            (X, Y) embeddings are reused with the current hypernetwork (cheap: no generation).
        ple_reduction: `"mean"` (mean squared difference over all generated entries, independent of model size) or
            `"sum"` (the paper's squared Euclidean norm).
        ple_detach_real: stop the penalty's gradient through H(X) (the real-data estimate is the target; see
            `docs/hypernetwork.md`).
        ple_prompt_length: causal LMs: tokens of each real example kept as the prompt of its synthetic continuation.
        ple_max_new_tokens: causal LMs: length of the sampled continuation (None: the batch's remaining length).
        base_model_name_or_path: recorded for `export_peft` (the exported adapter names its base model).
    """

    r: int = 8
    lora_alpha: float = 16
    target_modules: list[str] | str | None = None
    lora_dropout: float = 0.0
    set_encoder_input: str = "auto"
    unet_pool_size: int = 4
    set_encoder_hidden: int = 128
    context_dim: int = 64
    embedding_dim: int = 32
    hidden_size: int = 128
    head_rank: int = 32
    ple_weight: float = 0.0
    ple_every: int = 1
    ple_reduction: str = "mean"
    ple_detach_real: bool = True
    ple_prompt_length: int = 4
    ple_max_new_tokens: int | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="HYPER_LORA", init=False)

    def __post_init__(self) -> None:
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
        if self.ple_every < 1:
            raise ValueError(f"`ple_every` must be >= 1, got {self.ple_every}.")
        for name in ("set_encoder_hidden", "context_dim", "embedding_dim", "hidden_size", "head_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)

    def to_dict(self) -> dict:
        return asdict(self)

    def get_text_config(self, *args, **kwargs) -> HyperLoRAConfig:
        """`transformers.Trainer.train` aligns the tokenizer's special-token ids into
        `model.config.get_text_config()`, and a `HyperLoRAModel`'s `config` is this config. The hypernetwork uses no
        token ids, so the ids land here harmlessly (as plain attributes: `to_dict` and `save_pretrained` keep only the
        fields) instead of failing with an `AttributeError`."""
        return self

    @classmethod
    def from_dict(cls, values: dict) -> HyperLoRAConfig:
        known = {f.name for f in fields(cls) if f.init}
        return cls(**{key: value for key, value in values.items() if key in known})

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> HyperLoRAConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {CONFIG_NAME} in {directory!r}: not a HyperLoRAModel directory.")
        with open(path) as handle:
            return cls.from_dict(json.load(handle))
