"""Per-token losses through a causal LM's own forward, without its full logits.

``add_token_loss_forward(model)`` gives the causal LM inside ``model`` (a transformers ``*ForCausalLM``, possibly
wrapped by peft or ``hf_egt.integrations.hyper.HyperLoRAModel``) a second mode of its ``forward``:
``model(**batch, token_loss_labels=labels)`` runs the decoder, then ``hf_egt.core.losses.chunked_head_token_losses``
through the output embedding, and returns a [`TokenLossOutput`] (per-token losses and their mask; with
``token_loss_stats=True`` also entropy and top-1 hits) instead of logits.
Without ``token_loss_labels`` the forward is the original one (generation is unchanged).

Why a mode of ``forward`` rather than calling ``model.get_decoder()`` and the head from the trainer: the call goes
through every wrapper's own forward — DDP's gradient bookkeeping, FSDP's parameter gathering, peft's forward hooks and
the hypernetwork's ``torch.func.functional_call`` (the head's weights are read *inside* that call, so generated LoRA
factors of the head are used and receive gradients).

The head is looked up on every call. When it cannot be applied exactly in chunks (a layer type other than
``nn.Linear`` / peft LoRA ``Linear``, LoRA dropout while training, DoRA, forward hooks on the head), that call falls
back to the original forward and one ``cross_entropy`` on its logits, and the reason is logged once.
``check_token_loss_forward`` compares both paths on one short row, which the trainers do on their first batch.
"""

from __future__ import annotations

import inspect
import logging
import types
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from hf_egt.core.losses import causal_lm_token_losses, chunked_head_token_losses

logger = logging.getLogger(__name__)

TOKEN_LOSS_LABELS = "token_loss_labels"
_PATCHED = "_hf_egt_token_loss_forward"
# Keyword arguments of a `*ForCausalLM.forward` that its decoder does not take.
_HEAD_ONLY_ARGUMENTS = ("labels", "logits_to_keep", "num_items_in_batch", "shift_labels")


class UnsupportedHeadError(ValueError):
    """The output embedding cannot be applied in chunks exactly; the message says why."""


@dataclass
class TokenLossOutput(ModelOutput):
    """Output of a forward with ``token_loss_labels``: per-token next-token NLL (0 where ignored) and its mask,
    both ``(batch, seq_len)``, as ``hf_egt.core.losses.causal_lm_token_losses`` returns them."""

    token_losses: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None


@dataclass
class OutputHead:
    """What the chunked loss needs of an output embedding: logits = softcap(logit_scale * (h @ weight.T + bias))."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    logit_scale: float
    softcap: float | None


def logit_transform(config) -> tuple[float, float | None]:
    """``(logit_scale, softcap)`` a model applies to its head's output, read from its (text) config.

    Cohere's ``logit_scale``, Gemma 2's ``final_logit_softcapping``, and the other multipliers transformers models
    use (``output_multiplier``, ``lm_head_multiplier``, ``1 / logits_scaling``), as TRL's fused head reads them.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(config, name, None)
        if scale is not None:
            break
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        multiplies = getattr(config, "model_type", None) == "hyperclovax"
        scale = config.logits_scaling if multiplies else 1 / config.logits_scaling
    return (1.0 if scale is None else float(scale)), (None if softcap is None else float(softcap))


def _linear_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the linear map ``module`` computes, differentiably (a LoRA'd head's effective weight)."""
    if module._forward_hooks or module._forward_pre_hooks:
        name = type(module).__name__
        raise UnsupportedHeadError(f"the output embedding ({name}) has forward hooks, which the chunked path skips")
    if type(module) is nn.Linear:
        return module.weight, module.bias
    from peft.tuners.lora import Linear as LoraLinear
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(module, ModulesToSaveWrapper):
        active = module.active_adapters
        if module.disable_adapters or not active or any(name not in module.modules_to_save for name in active):
            return _linear_weights(module.original_module)
        return _linear_weights(module.modules_to_save[active[0]])
    if isinstance(module, LoraLinear):
        weight, bias = _linear_weights(module.get_base_layer())
        if module.disable_adapters or module.merged:
            return weight, bias
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            dropout = module.lora_dropout[name]
            if module.training and isinstance(dropout, nn.Dropout) and dropout.p > 0:
                raise UnsupportedHeadError(f"the LoRA'd output embedding has dropout {dropout.p} on adapter {name!r}")
            if module.use_dora.get(name, False) or module.lora_bias.get(name, False):
                raise UnsupportedHeadError(f"the LoRA'd output embedding uses DoRA or a LoRA bias (adapter {name!r})")
            weight = weight + module.get_delta_weight(name).to(weight.dtype)
        return weight, bias
    raise UnsupportedHeadError(
        f"the output embedding is a {type(module).__name__}; only torch.nn.Linear and peft LoRA Linear layers are "
        "applied in chunks"
    )


def output_head(causal_lm: nn.Module) -> OutputHead:
    """The output embedding of a transformers causal LM, as the chunked loss applies it (raises
    [`UnsupportedHeadError`] with the reason when it cannot)."""
    get_output_embeddings = getattr(causal_lm, "get_output_embeddings", None)
    head = get_output_embeddings() if callable(get_output_embeddings) else None
    if head is None:
        raise UnsupportedHeadError(f"{type(causal_lm).__name__} has no output embedding (`get_output_embeddings()`)")
    weight, bias = _linear_weights(head)
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        DTensor = ()  # noqa: N806
    if isinstance(weight, DTensor):  # FSDP2 shards parameters as DTensors: gather the head for the projection
        weight = weight.full_tensor()
        bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
    return OutputHead(weight, bias, *logit_transform(causal_lm.config))


def _decoder(causal_lm: nn.Module) -> nn.Module:
    decoder = getattr(causal_lm, "base_model", None)
    if not isinstance(decoder, nn.Module) or decoder is causal_lm:
        raise UnsupportedHeadError(f"{type(causal_lm).__name__} has no separate decoder (`base_model`)")
    return decoder


def find_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside peft / hypernetwork / DDP wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "module", None)  # DDP / FSDP1 wrappers
        if isinstance(inner, nn.Module) and not hasattr(model, "get_output_embeddings"):
            model = inner
            continue
        get_base_model = getattr(model, "get_base_model", None)
        if callable(get_base_model):
            model = get_base_model()
    return model


def add_token_loss_forward(model: nn.Module, chunk_size: int = 256) -> str | None:
    """Give the causal LM inside ``model`` the ``token_loss_labels`` mode of its forward (see the module docstring).

    Returns ``None`` when done (or already done), else why not (the model has no separable decoder and output
    embedding); the model is then left unchanged. Install it before wrapping the model with DDP / FSDP.
    """
    if chunk_size < 1:
        raise ValueError(f"`token_loss_chunk_size` must be a positive number of tokens, got {chunk_size}.")
    causal_lm = find_causal_lm(model)
    try:
        output_head(causal_lm)
        _decoder(causal_lm)
    except UnsupportedHeadError as error:
        return str(error)
    if getattr(causal_lm, _PATCHED, None) is not None:
        setattr(causal_lm, _PATCHED, chunk_size)
        return None
    # The function, not a bound method: a deep copy of the model (its `forward` re-bound to the copy) must not call
    # the original model. An instance-level forward already there (TRL's fused head) is kept underneath.
    instance_forward = causal_lm.__dict__.get("forward")
    if instance_forward is not None and getattr(instance_forward, "__self__", None) is not causal_lm:
        return f"the forward of {type(causal_lm).__name__} was replaced by {instance_forward!r}, not a method of it"
    original_function = instance_forward.__func__ if instance_forward is not None else type(causal_lm).forward
    warned: set[str] = set()

    def forward(self, *args, token_loss_labels: torch.Tensor | None = None, token_loss_stats: bool = False, **kwargs):
        if token_loss_labels is None:
            return original_function(self, *args, **kwargs)
        try:
            head = output_head(self)
        except UnsupportedHeadError as error:
            if str(error) not in warned:
                warned.add(str(error))
                logger.warning("Per-token losses from the full logits: %s.", error)
            outputs = original_function(self, *args, **{k: v for k, v in kwargs.items() if k != "labels"})
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            return TokenLossOutput(*causal_lm_token_losses(logits, token_loss_labels))
        decoder_kwargs = {k: v for k, v in kwargs.items() if k not in _HEAD_ONLY_ARGUMENTS}
        decoder_kwargs["use_cache"] = False
        decoded = _decoder(self)(*args, **decoder_kwargs)
        hidden = decoded["last_hidden_state"] if isinstance(decoded, dict) else decoded[0]
        per_token = chunked_head_token_losses(
            hidden.to(head.weight.device),
            head.weight,
            token_loss_labels.to(head.weight.device),
            head.bias,
            chunk_size=getattr(self, _PATCHED),
            logit_scale=head.logit_scale,
            softcap=head.softcap,
            with_stats=token_loss_stats,
        )
        return TokenLossOutput(*per_token)

    keywords = (TOKEN_LOSS_LABELS, "token_loss_stats")
    forward.__signature__ = _method_signature_with_keywords(causal_lm.forward, keywords)
    causal_lm.forward = types.MethodType(forward, causal_lm)
    setattr(causal_lm, _PATCHED, chunk_size)
    return None


def _method_signature_with_keywords(bound_method, names: tuple[str, ...]) -> inspect.Signature:
    """The signature of a method taking ``self``, the parameters of ``bound_method`` and keyword-only ``names``
    (``generate`` and ``Trainer`` read the forward's signature)."""
    parameters = list(inspect.signature(bound_method).parameters.values())
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    position = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([self_parameter, *parameters[:position], *extra, *parameters[position:]])


def has_token_loss_forward(model: nn.Module) -> bool:
    return getattr(find_causal_lm(model), _PATCHED, None) is not None


@torch.no_grad()
def check_token_loss_forward(
    model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, max_tokens: int = 32
) -> str | None:
    """Compare the chunked per-token losses with the full-logits ones on the first row of a batch (at most
    ``max_tokens`` tokens, each predicting the next input token; eval mode, no gradient). ``None`` when they agree,
    else why not.

    A model whose forward does more than decoder -> head -> logit transform (an extra multiplier, a different
    sequence length, ...) is caught here; the check costs one short forward of each kind.
    """
    row = {k: v[:1, :max_tokens] if torch.is_tensor(v) and v.dim() >= 2 else v for k, v in inputs.items()}
    # Every position counts in the check (the row's own tokens as targets), so that a row whose first tokens are all
    # ignored (a long prompt) still compares the two paths; the masking itself is the same code in both.
    row_labels = row["input_ids"] if torch.is_tensor(row.get("input_ids")) else labels[:1, :max_tokens]
    was_training = model.training
    model.eval()
    try:
        outputs = model(**row)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        expected, mask = causal_lm_token_losses(logits, row_labels)
        chunked = model(**row, **{TOKEN_LOSS_LABELS: row_labels})
        got = chunked["token_losses"]
    except Exception as error:  # any failure of the chunked path means: use the full one
        return f"the chunked path failed on the first batch ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    if got.shape != expected.shape or not torch.equal(chunked["label_mask"].cpu(), mask.cpu()):
        return f"the chunked path gave shape {tuple(got.shape)} where the logits give {tuple(expected.shape)}"
    tolerance = 1e-4 if logits.dtype == torch.float32 else 5e-2
    error = (got.float() - expected.float()).abs().max().item() if mask.any() else 0.0
    if not error <= tolerance * (1.0 + expected.abs().max().item()):
        return f"the chunked per-token losses differ from the full-logits ones by {error:.3g} on the first batch"
    return None
