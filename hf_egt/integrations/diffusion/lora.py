"""LoRA on the UNet (peft), and saving it in formats the plain libraries load without hf_egt."""

from __future__ import annotations

import os

import torch

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CONV_TARGETS = ("conv1", "conv2")


def unet_lora_config(rank: int, alpha: float | None = None, lora_conv: bool = False, dropout: float = 0.0):
    """A ``LoraConfig`` on the UNet's attention projections (and its ResNet convolutions with ``lora_conv``)."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"`--lora_r` must be >= 1, got {rank}.")
    targets = list(ATTENTION_TARGETS) + (list(CONV_TARGETS) if lora_conv else [])
    return LoraConfig(
        r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, init_lora_weights="gaussian", target_modules=targets
    )


def check_lora_targets(unet, config) -> None:
    """Raise a ``ValueError`` naming ``--lora_conv`` when the UNet has none of the config's target modules."""
    names = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()}
    dotted = {".".join(name.split(".")[-2:]) for name, _ in unet.named_modules()}
    if not any(target in names or target in dotted for target in config.target_modules):
        raise ValueError(
            f"The UNet ({type(unet).__name__}) has no module named {sorted(config.target_modules)}: it has no "
            "attention layers. Use `--lora_conv` to adapt its convolutions, or a UNet with attention blocks."
        )


def add_unet_lora(unet, config):
    """Add LoRA to a UNet; return the module to train.

    ``UNet2DConditionModel`` has ``add_adapter`` (the diffusers way, saved with ``save_lora_weights``). ``UNet2DModel``
    has no ``PeftAdapterMixin``, so it is wrapped by ``peft.get_peft_model`` and saved as a peft adapter.
    """
    from peft import get_peft_model

    check_lora_targets(unet, config)
    if hasattr(unet, "add_adapter"):
        unet.add_adapter(config)
        return unet
    return get_peft_model(unet, config)


def lora_parameters(model) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's naming (the same for both kinds)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def save_unet_lora(model, kind: str, output_dir: str | os.PathLike) -> None:
    """Save the adapter where the plain libraries load it.

    - ``stable-diffusion``: ``pytorch_lora_weights.safetensors`` in the diffusers format, for
      ``StableDiffusionPipeline.load_lora_weights``;
    - ``unet2d``: a peft adapter folder, for ``PeftModel.from_pretrained(UNet2DModel.from_pretrained(...), folder)``.
    """
    os.makedirs(output_dir, exist_ok=True)
    if kind == "stable-diffusion":
        save_diffusers_unet_lora(lora_state_dict(model), output_dir, model.peft_config["default"])
    else:
        model.save_pretrained(str(output_dir), save_embedding_layers=False)


def save_diffusers_unet_lora(
    state_dict: dict[str, torch.Tensor], output_dir: str | os.PathLike, lora_config=None
) -> None:
    """Write a UNet LoRA state dict in peft naming (``<module>.lora_A.weight``, relative to the UNet) as
    ``pytorch_lora_weights.safetensors`` in the diffusers format, for ``StableDiffusionPipeline.load_lora_weights``.

    ``lora_config`` (its ``LoraConfig``) goes into the file's adapter metadata, as diffusers' training scripts do:
    without it ``load_lora_weights`` takes ``lora_alpha`` equal to the rank, and a LoRA with another alpha would
    load at the wrong scale."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(output_dir),
        unet_lora_layers=convert_state_dict_to_diffusers(state_dict),
        safe_serialization=True,
        unet_lora_adapter_metadata=None if lora_config is None else lora_config.to_dict(),
    )


def save_hyper_unet_lora(model, kind: str, output_dir: str | os.PathLike) -> None:
    """Export the LoRA weights a ``HyperLoRAModel`` generates for its fixed context like :func:`save_unet_lora`:
    a diffusers LoRA file (``stable-diffusion``) or a peft adapter folder (``unet2d``), loadable without hf_egt."""
    os.makedirs(output_dir, exist_ok=True)
    if kind == "stable-diffusion":
        prefix = "base_model.model."
        weights = {name.removeprefix(prefix): tensor.detach() for name, tensor in model.generate_lora_weights().items()}
        save_diffusers_unet_lora(weights, output_dir, next(iter(model.peft_model.peft_config.values())))
    else:
        model.export_peft(str(output_dir), save_embedding_layers=False)
