"""`HyperLoRAModel`: a hypernetwork that generates the LoRA factors of a frozen peft model from a set of examples."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from hf_egt.core.vocabulary import warn_renamed
from hf_egt.integrations.hyper.config import HYPER_LORA, HyperLoRAConfig
from hf_egt.integrations.hyper.encoders import SetEmbedder, SetEncoder, build_embedder, is_unet
from hf_egt.integrations.hyper.generator import LoRAGenerator, generated_parameters, slots_from_shapes
from hf_egt.integrations.hyper.ple import context_sensitivity, ple_penalty
from hf_egt.integrations.hyper.sampling import CausalLMSampler

logger = logging.getLogger(__name__)

HYPERNETWORK_KEY = "hypernetwork."  # saved state-dict keys: "hypernetwork.<parameter or buffer>"

Sampler = Callable[[nn.Module, tuple, dict], tuple[tuple, dict]]


class HyperNetwork(nn.Module):
    """The trainable part: DeepSets set encoder, then the shared LoRA heads; and the context fixed for inference
    (`context`, valid when `has_context`), saved with the parameters."""

    def __init__(self, set_encoder: SetEncoder, generator: LoRAGenerator, context_dim: int):
        super().__init__()
        self.set_encoder = set_encoder
        self.generator = generator
        self.register_buffer("context", torch.zeros(context_dim))
        self.register_buffer("has_context", torch.tensor(False))

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.generator(self.set_encoder(embeddings))


def build_hypernetwork(
    slots: list, embed_dim: int, config: HyperLoRAConfig, head_rank: int | None = None
) -> HyperNetwork:
    """The set encoder and LoRA generator that `config` describes (`head_rank` overrides the config's)."""
    return HyperNetwork(
        SetEncoder(embed_dim, config.set_encoder_hidden, config.context_dim),
        LoRAGenerator(
            slots, config.context_dim, config.embedding_dim, config.hidden_size, head_rank or config.head_rank
        ),
        config.context_dim,
    )


def head_rank_within(slots: list, embed_dim: int, config: HyperLoRAConfig, budget: int) -> int:
    """The largest `head_rank` whose hypernetwork (other sizes from `config`) has at most `budget` parameters.

    Sizes are counted on the meta device (nothing is allocated); the count grows with `head_rank`, so a doubling
    then bisection search finds it.
    """

    def size(head_rank: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build_hypernetwork(slots, embed_dim, config, head_rank).parameters())

    smallest = size(1)
    if smallest > budget:
        raise ValueError(
            f"`match_lora_parameters`: even `head_rank=1` gives {smallest} hypernetwork parameters, more than the "
            f"{budget} of the LoRA it generates; lower `hidden_size`, `set_encoder_hidden`, `context_dim` or "
            "`embedding_dim`, or raise `r`."
        )
    low, high = 1, 2
    while size(high) <= budget:
        low, high = high, 2 * high
    while high - low > 1:  # size(low) <= budget < size(high)
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) <= budget else (low, middle)
    return low


class HyperLoRAModel(nn.Module):
    """A frozen base model adapted by LoRA factors that a hypernetwork generates from a set of examples; the peft
    tuner of the `HYPER_LORA` method (registered with peft on `import hf_egt.integrations.hyper`, and on `import
    hf_egt` as soon as peft is imported).

    Like `peft.LoraModel`, it can be built directly (`HyperLoRAModel(model, config)`, which also takes the set
    embedder and PLE sampler) or by peft (`get_peft_model(model, config)`, `PeftModel.from_pretrained(model, dir)`,
    `AutoPeftModelForCausalLM.from_pretrained(dir)`), which wrap it as the `base_model` of a `PeftModel`.

    The base model is wrapped with `peft.get_peft_model` (all of it frozen, the peft LoRA parameters are
    placeholders) and run with `torch.func.functional_call`, substituting the generated factors so that gradients
    reach the hypernetwork. `forward` returns the base model's own output, so `transformers.Trainer` trains it
    unchanged; while training with `ple_weight > 0` the output also holds `"ple"`, the weighted self-consumption
    penalty (already multiplied by λ) for the trainer to add to the loss.

    It is not a `peft.tuners.tuners_utils.BaseTuner`: a BaseTuner's adapter weights are parameters of the layers it
    injects, while these LoRA factors are a function of the batch, substituted with `torch.func.functional_call`
    into the placeholders of a frozen peft LoRA model; it implements the part of the tuner interface `PeftModel` uses
    (`peft_config`, `model`, `prefix`, the state-dict hooks of `peft.utils.save_and_load`, adapter enable/disable).

    Args:
        base_model: a transformers causal LM or a diffusers `UNet2DModel` (anything peft's LoRA can adapt, given an
            `embed_fn`). Like `peft.get_peft_model`, this injects LoRA layers into it in place.
        config: the [`HyperLoRAConfig`] (or peft's `{adapter_name: config}`).
        adapter_name: the adapter's name (peft's; one adapter per model).
        embed_fn: optional custom set embedder `(peft_model, args, kwargs) -> (N, D)`; needs `embed_dim`.
        embed_dim: `D` of `embed_fn`.
        ple_sampler: draws the synthetic batch Y for the PLE penalty (see `hf_egt.integrations.hyper.sampling`);
            causal LMs default to `CausalLMSampler`, UNets need e.g. `DiffusionSampler(scheduler)` when
            `ple_weight > 0`.
    """

    prefix = "hyper_lora_"

    def __init__(
        self,
        base_model: nn.Module,
        config: HyperLoRAConfig | Mapping[str, HyperLoRAConfig],
        adapter_name: str = "default",
        *,
        embed_fn: SetEmbedder | Callable | None = None,
        embed_dim: int | None = None,
        ple_sampler: Sampler | None = None,
    ):
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        super().__init__()
        if isinstance(config, Mapping):
            if set(config) != {adapter_name}:
                raise ValueError(
                    f"A HyperLoRAModel holds one adapter, {adapter_name!r}; got configs for {list(config)}."
                )
            config = config[adapter_name]
        if not isinstance(config, HyperLoRAConfig):
            raise TypeError(f"`config` must be a HyperLoRAConfig, got {type(config).__name__}.")
        self.peft_config = {adapter_name: config}
        self.adapter_name = self.active_adapter = adapter_name
        self._forward_ran = False
        causal_lm = type(base_model).__name__.endswith("ForCausalLM")
        lora_config = LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            target_modules=config.target_modules,
            lora_dropout=config.lora_dropout,
            bias="none",
            task_type="CAUSAL_LM" if causal_lm else None,
            base_model_name_or_path=config.base_model_name_or_path,
        )
        self.peft_model = get_peft_model(base_model, lora_config, adapter_name=adapter_name)
        self.peft_model.requires_grad_(False)
        if config.base_model_name_or_path is not None:
            # peft replaces it by the model's `name_or_path`, which diffusers models do not have.
            self.peft_model.peft_config[adapter_name].base_model_name_or_path = config.base_model_name_or_path

        shapes = []
        for name, module in self.peft_model.named_modules():
            if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
                a_shape = tuple(module.lora_A[adapter_name].weight.shape)
                b_shape = tuple(module.lora_B[adapter_name].weight.shape)
                shapes.append((name, a_shape, b_shape))
        slots = slots_from_shapes(shapes)

        if embed_fn is not None:
            if embed_dim is None:
                raise ValueError("`embed_dim` is required with a custom `embed_fn`.")
            self.embedder = embed_fn
        else:
            self.embedder = build_embedder(config.set_encoder_input, base_model, config.unet_pool_size)
            embed_dim = self.embedder.dim(base_model)
        if config.match_lora_parameters:
            budget = generated_parameters(slots)
            config.head_rank = head_rank_within(slots, embed_dim, config, budget)
            logger.info(
                "HyperLoRA: head_rank %d keeps the hypernetwork within LoRA's %d parameters.", config.head_rank, budget
            )
        self.hypernetwork = build_hypernetwork(slots, embed_dim, config)
        if ple_sampler is None and not is_unet(base_model):
            ple_sampler = CausalLMSampler(config.ple_prompt_length, config.ple_max_new_tokens)
        if ple_sampler is None and config.ple_weight > 0:
            raise ValueError(
                f"`ple_weight={config.ple_weight}` needs a `ple_sampler` for {type(base_model).__name__}, e.g. "
                "`hf_egt.integrations.hyper.sampling.DiffusionSampler(scheduler)`."
            )
        self.ple_sampler = ple_sampler
        parameter = next(base_model.parameters(), None)
        if parameter is not None:
            self.hypernetwork.to(parameter.device)
        self._expose_base_signature(base_model)
        self.hypernetwork.register_load_state_dict_post_hook(self._after_load)
        self._ple_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ple_calls = 0

    def _expose_base_signature(self, base_model: nn.Module) -> None:
        """Give this instance's `forward` the base model's signature (plus `context_set`).

        `transformers.Trainer` keeps only the batch columns named in `inspect.signature(model.forward)`; with the
        generic `forward(*args, **kwargs)` it would drop `input_ids`. The instance gets a bound copy of `forward`
        whose `__signature__` is the base model's, as `Trainer` does for a `PeftModel` by inspecting its base model.
        """
        base_signature = inspect.signature(base_model.forward)
        parameters = [p for p in base_signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        parameters.append(inspect.Parameter("context_set", inspect.Parameter.KEYWORD_ONLY, default=None))
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        function = HyperLoRAModel.forward
        forward = types.FunctionType(
            function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__
        )
        forward.__kwdefaults__ = function.__kwdefaults__
        forward.__doc__ = function.__doc__
        forward.__signature__ = inspect.Signature([self_parameter, *parameters])
        self.forward = types.MethodType(forward, self)

    # ----------------------------------------------------------------------------------------------------------------
    # names and counts

    @property
    def hyper_config(self) -> HyperLoRAConfig:
        return self.peft_config[self.adapter_name]

    @property
    def model(self) -> nn.Module:
        """The base model (with the LoRA placeholder layers), as `PeftModel.get_base_model` expects of a tuner."""
        return self.peft_model.get_base_model()

    @property
    def config(self):
        """The base model's config (as a peft tuner's `config`); the method's settings are `hyper_config`."""
        return self.model.config

    def get_base_model(self) -> nn.Module:
        return self.model

    def __getattr__(self, name: str):
        """Other attributes come from the base model (`generation_config`, ...), as for a peft `BaseTuner`."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("peft_model", "hypernetwork", "peft_config"):
                raise  # not built yet (during `__init__`), or private
            return getattr(self.model, name)

    def prepare_inputs_for_generation(self, *args, **kwargs):
        return self.model.prepare_inputs_for_generation(*args, **kwargs)

    def disable_adapter_layers(self) -> None:
        """Run the base model alone (`PeftModel.disable_adapter`): the LoRA layers are skipped."""
        self.peft_model.base_model.disable_adapter_layers()

    def enable_adapter_layers(self) -> None:
        self.peft_model.base_model.enable_adapter_layers()

    @property
    def slots(self):
        return self.hypernetwork.generator.slots

    def _parameter_name(self, factor_name: str) -> str:
        return f"{factor_name}.{self.adapter_name}.weight"

    @staticmethod
    def _state_dict_name(factor_name: str) -> str:
        return f"{factor_name}.weight"

    def num_hypernetwork_parameters(self) -> int:
        return sum(p.numel() for p in self.hypernetwork.parameters())

    def num_generated_parameters(self) -> int:
        return generated_parameters(self.slots)

    # ----------------------------------------------------------------------------------------------------------------
    # set encoding and weight generation

    def embed(self, *args, **kwargs) -> torch.Tensor:
        """Per-example embeddings `(N, D)` of a batch, from the frozen base model (no gradient)."""
        return self.embedder(self.peft_model, args, kwargs)

    def encode(self, *args, **kwargs) -> torch.Tensor:
        """The context vector of a batch (the batch is the set)."""
        return self.hypernetwork.set_encoder(self.embed(*args, **kwargs))

    def generate_factors(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"<module>.lora_A": A, "<module>.lora_B": B}` for a context, differentiable."""
        return self.hypernetwork.generator(context)

    @property
    def _context(self) -> torch.Tensor | None:
        return self.hypernetwork.context if bool(self.hypernetwork.has_context) else None

    def _current_context(self) -> torch.Tensor:
        if self._context is None:
            raise ValueError("No context is set: call `set_context(**batch)` or `set_context(context=...)` first.")
        return self._context

    def generate_lora_weights(self, context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The generated LoRA weights under peft state-dict names, for `context` or the one `set_context` fixed."""
        context = self._current_context() if context is None else context
        return {self._state_dict_name(name): tensor for name, tensor in self.generate_factors(context).items()}

    def set_context(self, *args, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Fix the context used at inference: from a batch (`set_context(**batch)`) or a precomputed encoding."""
        with torch.no_grad():
            if context is None:
                if not args and not kwargs:
                    raise ValueError("`set_context` needs a batch or `context=`.")
                context = self.encode(*args, **kwargs)
            expected = self.hyper_config.context_dim
            if context.shape != (expected,):
                raise ValueError(f"`context` must have shape ({expected},), got {tuple(context.shape)}.")
            self.hypernetwork.context.copy_(context.detach())
            self.hypernetwork.has_context.fill_(True)
            self._load_into_peft(self.generate_factors(self.hypernetwork.context))
        return self.hypernetwork.context

    def clear_context(self) -> None:
        self.hypernetwork.has_context.fill_(False)

    def _after_load(self, module: nn.Module, incompatible_keys) -> None:
        """After the hypernetwork's state is loaded: the placeholders hold the weights of its saved context, so a
        call that runs the base model directly (a `PeftModel` without task type, e.g. over a UNet) uses them."""
        if self._context is not None:
            with torch.no_grad():
                self._load_into_peft(self.generate_factors(self._context))

    @torch.no_grad()
    def _load_into_peft(self, factors: Mapping[str, torch.Tensor]) -> None:
        """Copy generated factors into the peft placeholders (no gradient: for generation and export only)."""
        parameters = dict(self.peft_model.named_parameters())
        for name, tensor in factors.items():
            target = parameters[self._parameter_name(name)]
            target.copy_(tensor.detach().to(target.dtype))

    def _functional_parameters(self, factors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parameters = dict(self.peft_model.named_parameters())
        out = {}
        for name, tensor in factors.items():
            target = parameters[self._parameter_name(name)]
            out[self._parameter_name(name)] = tensor.to(target.dtype)
        return out

    # ----------------------------------------------------------------------------------------------------------------
    # forward

    def forward(self, *args, context_set: Mapping[str, Any] | None = None, **kwargs):
        """Run the base model with LoRA factors generated from a set.

        The set is `context_set` (a batch as a dict, e.g. the clean images of a diffusion step) when given; else the
        batch itself while training, or when no context is fixed; else the context fixed by `set_context`. The old
        keyword `set_inputs` still works for one release, with a `FutureWarning`.
        """
        if "set_inputs" in kwargs:
            if context_set is not None:
                raise TypeError("HyperLoRAModel.forward: pass `context_set` only (`set_inputs` is its old name).")
            warn_renamed("`set_inputs`", "`context_set`", "HyperLoRAModel.forward")
            context_set = kwargs.pop("set_inputs")
        self._forward_ran = True
        if context_set is not None:
            embeddings = self.embedder(self.peft_model, (), dict(context_set))
        elif self.training or self._context is None:
            embeddings = self.embed(*args, **kwargs)
        else:
            embeddings = None
        if embeddings is None:
            factors = self.generate_factors(self._context)
        else:
            factors = self.generate_factors(self.hypernetwork.set_encoder(embeddings))
        output = torch.func.functional_call(self.peft_model, self._functional_parameters(factors), args, kwargs)
        if self.training and self.hyper_config.ple_weight > 0 and embeddings is not None and torch.is_grad_enabled():
            sample_args, sample_kwargs = ((), dict(context_set)) if context_set is not None else (args, kwargs)
            penalty = self.hyper_config.ple_weight * self._ple_term(embeddings, factors, sample_args, sample_kwargs)
            if isinstance(output, Mapping):
                output["ple"] = penalty
            else:
                logger.warning("The base model returned a tuple (return_dict=False): the PLE term is not attached.")
        return output

    def _ple_term(
        self, embeddings_x: torch.Tensor, factors_x: dict[str, torch.Tensor], args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """D(H(Y), H(X)); Y is re-sampled every `ple_every` calls, otherwise the cached (X, Y) embeddings are used."""
        resample = self._ple_cache is None or self._ple_calls % self.hyper_config.ple_every == 0
        self._ple_calls += 1
        if resample:
            with torch.no_grad():
                self._load_into_peft(factors_x)
                was_training = self.peft_model.training
                self.peft_model.eval()
                try:
                    sample_args, sample_kwargs = self.ple_sampler(self.peft_model, args, kwargs)
                    embeddings_y = self.embedder(self.peft_model, sample_args, sample_kwargs)
                finally:
                    self.peft_model.train(was_training)
            self._ple_cache = (embeddings_x.detach(), embeddings_y.detach())
            weights_real = factors_x
        else:
            weights_real = self.hypernetwork(self._ple_cache[0])
        weights_synthetic = self.hypernetwork(self._ple_cache[1])
        return ple_penalty(
            weights_synthetic,
            weights_real,
            reduction=self.hyper_config.ple_reduction,
            detach_real=self.hyper_config.ple_detach_real,
        )

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """`generate` of the base model with the LoRA weights of the context fixed by `set_context`."""
        self._load_into_peft(self.generate_factors(self._current_context()))
        return self.peft_model.generate(*args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # diagnostics

    @torch.no_grad()
    def context_sensitivity(self, batches: Iterable[Mapping[str, Any]]) -> torch.Tensor:
        """`hf_egt.integrations.hyper.ple.context_sensitivity` of the weights generated for each batch (each batch is
        one set)."""
        generated = [self.generate_factors(self.encode(**batch)) for batch in batches]
        return context_sensitivity(generated)

    # ----------------------------------------------------------------------------------------------------------------
    # persistence: peft's adapter files (`adapter_config.json`, `adapter_model.safetensors`), read and written by
    # peft's own `save_pretrained` / `load_adapter` through the hooks below

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only the hypernetwork (and its fixed context): like a peft adapter's, the state dict leaves out the frozen
        base model."""
        return self.hypernetwork.state_dict(
            destination=destination, prefix=prefix + HYPERNETWORK_KEY, keep_vars=keep_vars
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        own = {k.removeprefix(HYPERNETWORK_KEY): v for k, v in state_dict.items() if k.startswith(HYPERNETWORK_KEY)}
        if strict and len(own) != len(state_dict):
            unexpected = sorted(k for k in state_dict if not k.startswith(HYPERNETWORK_KEY))
            raise RuntimeError(f"Unexpected keys in the HyperLoRAModel state dict: {unexpected[:5]}")
        return self.hypernetwork.load_state_dict(own, strict=strict, assign=assign)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """peft's save hook (`get_peft_model_state_dict`): the hypernetwork's entries of the wrapping model's state
        dict, keyed `hypernetwork.<name>` wherever the tuner sits."""
        marker = f".{HYPERNETWORK_KEY}"
        return {
            HYPERNETWORK_KEY + f".{key}".split(marker, 1)[1]: value
            for key, value in state_dict.items()
            if marker in f".{key}"
        }

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key  # one adapter per model: the saved keys carry no adapter name

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """peft's load hook (`set_peft_model_state_dict`): `hypernetwork.<name>` -> the key in `model`."""
        (prefix,) = [name for name, module in model.named_modules() if isinstance(module, HyperNetwork)]
        return {f"{prefix}.{key.removeprefix(HYPERNETWORK_KEY)}": value for key, value in state_dict.items()}

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Entered by every `PeftModel.forward` / `generate`. `PeftModelForCausalLM` calls this tuner's `forward`
        (the hypernetwork runs); a `PeftModel` without task type calls the base model directly, with the LoRA weights
        of the fixed context: right for inference, but training that way would not reach the hypernetwork, so a
        training forward that skipped this tuner is an error."""
        self._forward_ran = False
        yield
        if self.training and torch.is_grad_enabled() and not self._forward_ran:
            raise RuntimeError(
                "This PeftModel called the base model without the HyperLoRA hypernetwork (a `PeftModel` without "
                "`task_type`): train through `get_peft_model(model, HyperLoRAConfig(task_type='CAUSAL_LM', ...))` for "
                "a causal LM, or call the tuner itself (`peft_model.base_model(...)`, or a `HyperLoRAModel`)."
            )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write `adapter_config.json` and `adapter_model.safetensors` (the hypernetwork and its fixed context), the
        files `PeftModel.save_pretrained` writes for this method: `PeftModel.from_pretrained(base, save_directory)`
        (after `import hf_egt`) and [`HyperLoRAModel.from_pretrained`] load them."""
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        self.hyper_config.save_pretrained(str(save_directory))
        tensors = {key: value.detach().contiguous() for key, value in self.state_dict().items()}
        save_file(tensors, os.path.join(save_directory, SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, path: str | os.PathLike, **kwargs) -> HyperLoRAModel:
        """Rebuild a saved HyperLoRA adapter on `base_model` as a `HyperLoRAModel` (extra kwargs go to the
        constructor, e.g. `ple_sampler=`); `PeftModel.from_pretrained` gives the same model wrapped in a
        `PeftModel`."""
        from peft.utils import load_peft_weights

        config = HyperLoRAConfig.from_pretrained(str(path))
        if config.peft_type != HYPER_LORA:
            raise ValueError(f"{path} holds a {config.peft_type} adapter, not a HyperLoRA one.")
        model = cls(base_model, config, **kwargs)
        device = next(model.hypernetwork.parameters()).device
        model.load_state_dict(load_peft_weights(str(path), device=str(device)))
        return model

    def export_peft(
        self, save_directory: str | os.PathLike, context: torch.Tensor | None = None, **save_kwargs
    ) -> None:
        """Write a plain peft LoRA adapter holding the weights of the current (or given) context.

        `peft.PeftModel.from_pretrained(base_model, save_directory)` loads it without hf_egt. `save_kwargs` go to
        `PeftModel.save_pretrained` (e.g. `save_embedding_layers=False`).
        """
        with torch.no_grad():
            context = self._current_context() if context is None else context
            self._load_into_peft(self.generate_factors(context))
        self.peft_model.save_pretrained(save_directory, **save_kwargs)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.get_base_model().gradient_checkpointing_enable(**kwargs)


def register_with_peft() -> None:
    """Make `HYPER_LORA` a peft method: its config, tuner and prefix in peft's registries, the entries
    `peft.utils.register_peft_method` writes (which cannot be used here: it refuses names outside peft's closed enum
    `PeftType`). Then `PeftConfig.from_pretrained`, `get_peft_model`, `PeftModel.from_pretrained` and
    `AutoPeftModel*` dispatch on `peft_type` to [`HyperLoRAConfig`] and [`HyperLoRAModel`]. Idempotent."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    PEFT_TYPE_TO_CONFIG_MAPPING[HYPER_LORA] = HyperLoRAConfig
    PEFT_TYPE_TO_TUNER_MAPPING[HYPER_LORA] = HyperLoRAModel
    PEFT_TYPE_TO_PREFIX_MAPPING[HYPER_LORA] = HyperLoRAModel.prefix
