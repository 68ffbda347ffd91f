"""Per-example embeddings taken from the frozen base model, and the DeepSets set encoder over them.

An *embedder* turns a model-family batch into one vector per example (`(N, D)`); the set encoder pools them into
one context vector. Embedders are plain callables `(peft_model, args, kwargs) -> Tensor` with a `dim(base_model)`
method, so a new model family needs one small class, not a change to the hypernetwork.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from hf_egt.core.losses import masked_mean


class SetEmbedder(Protocol):
    def dim(self, base_model: nn.Module) -> int: ...

    def __call__(self, peft_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor: ...


def _batch_argument(args: tuple, kwargs: dict[str, Any], name: str, position: int = 0) -> Any:
    if name in kwargs and kwargs[name] is not None:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    return None


class InputEmbeddingsEmbedder:
    """Causal LMs: masked mean of the input token embeddings. Costs one embedding lookup, no extra forward."""

    def dim(self, base_model: nn.Module) -> int:
        return base_model.get_input_embeddings().embedding_dim

    @torch.no_grad()
    def __call__(self, peft_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        embeddings = kwargs.get("inputs_embeds")
        if embeddings is None:
            input_ids = _batch_argument(args, kwargs, "input_ids")
            if input_ids is None:
                raise ValueError("The set encoder needs `input_ids` or `inputs_embeds` in the batch.")
            embeddings = peft_model.get_base_model().get_input_embeddings()(input_ids)
        return masked_mean(embeddings.float(), kwargs.get("attention_mask"))[0]


class LastHiddenEmbedder:
    """Causal LMs: masked mean of the frozen base model's last hidden state (adapters off, no grad, no LM head)."""

    def dim(self, base_model: nn.Module) -> int:
        return base_model.config.hidden_size

    @torch.no_grad()
    def __call__(self, peft_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        base = peft_model.get_base_model()
        backbone = getattr(base, base.base_model_prefix, base)
        inputs = {"attention_mask": kwargs.get("attention_mask")}
        if kwargs.get("inputs_embeds") is not None:
            inputs["inputs_embeds"] = kwargs["inputs_embeds"]
        else:
            inputs["input_ids"] = _batch_argument(args, kwargs, "input_ids")
            if inputs["input_ids"] is None:
                raise ValueError("The set encoder needs `input_ids` or `inputs_embeds` in the batch.")
        with peft_model.disable_adapter():
            hidden = backbone(**inputs, use_cache=False).last_hidden_state
        return masked_mean(hidden.float(), kwargs.get("attention_mask"))[0]


class UNetPooledEmbedder:
    """Diffusers UNets: the batch of images (`sample`) average-pooled to `pool_size`² and flattened."""

    def __init__(self, pool_size: int = 4):
        self.pool_size = pool_size

    def dim(self, base_model: nn.Module) -> int:
        return base_model.config.in_channels * self.pool_size**2

    @torch.no_grad()
    def __call__(self, peft_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        sample = _batch_argument(args, kwargs, "sample")
        if sample is None:
            raise ValueError("The UNet set encoder needs the batch of images as `sample`.")
        pooled = nn.functional.adaptive_avg_pool2d(sample.float(), self.pool_size)
        return pooled.flatten(start_dim=1)


def is_unet(model: nn.Module) -> bool:
    return "UNet" in type(model).__name__


def build_embedder(kind: str, base_model: nn.Module, unet_pool_size: int = 4) -> SetEmbedder:
    """The embedder named by `HyperLoRAConfig.set_encoder_input` (`"auto"` picks by model family)."""
    if kind == "auto":
        if is_unet(base_model):
            kind = "unet_pooled"
        elif hasattr(base_model, "get_input_embeddings"):
            kind = "input_embeddings"
        else:
            raise ValueError(
                f"`set_encoder_input='auto'` does not know {type(base_model).__name__}; pass one of "
                "'input_embeddings', 'last_hidden', 'unet_pooled' or a custom `embed_fn`."
            )
    if kind == "input_embeddings":
        return InputEmbeddingsEmbedder()
    if kind == "last_hidden":
        return LastHiddenEmbedder()
    if kind == "unet_pooled":
        return UNetPooledEmbedder(unet_pool_size)
    raise ValueError(f"Unknown `set_encoder_input` {kind!r}.")


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class SetEncoder(nn.Module):
    """DeepSets: context = h2(mean_i h1(e_i)). Permutation invariant, any set size.

    `input_norm` standardises each example's embedding first (LayerNorm without affine): base-model embeddings
    and pooled images come at very different scales. Turn it off for low-dimensional raw data.
    """

    def __init__(self, input_dim: int, hidden: int, context_dim: int, input_norm: bool = True):
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim, elementwise_affine=False) if input_norm else nn.Identity()
        self.h1 = mlp(input_dim, hidden, hidden)
        self.h2 = mlp(hidden, hidden, context_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`(N, D)` -> `(context_dim,)`; a batch of sets `(..., N, D)` -> `(..., context_dim)`."""
        if embeddings.dim() < 2 or embeddings.shape[-2] == 0:
            raise ValueError(f"The set encoder expects a non-empty (N, D) set, got shape {tuple(embeddings.shape)}.")
        return self.h2(self.h1(self.input_norm(embeddings)).mean(dim=-2))
