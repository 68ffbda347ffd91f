"""Load the model to fine-tune from a Hub id or a folder, and run its denoising forward pass.

Two kinds are supported:

- ``"unet2d"``: a ``UNet2DModel`` (a bare model repo or a ``DDPMPipeline``-style repo with ``unet/`` and
  ``scheduler/``), unconditional, or class-conditional when its config has ``num_class_embeds`` (the group id is
  then the class label);
- ``"stable-diffusion"``: a Stable-Diffusion-style repo (``UNet2DConditionModel`` + CLIP text encoder and tokenizer
  + ``AutoencoderKL``), conditioned on a caption column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DiffusionComponents:
    """The parts of a diffusion model that training touches (``vae``, ``text_encoder``, ``tokenizer``: SD only)."""

    kind: str
    unet: Any
    noise_scheduler: Any
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None

    @property
    def class_conditional(self) -> bool:
        return self.kind == "unet2d" and self.unet.config.get("num_class_embeds") is not None

    @property
    def image_channels(self) -> int:
        return self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels


def load_components(pretrained_model_name_or_path: str, revision: str | None = None) -> DiffusionComponents:
    """Load the components of a ``UNet2DModel`` or Stable Diffusion model from a Hub id or a local folder."""
    from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel

    path, kwargs = pretrained_model_name_or_path, {"revision": revision}
    try:
        index = DiffusionPipeline.load_config(path, **kwargs)
    except (OSError, ValueError):
        index = None  # no model_index.json: a bare UNet2DModel repo
    if index is None:
        return DiffusionComponents("unet2d", UNet2DModel.from_pretrained(path, **kwargs), DDPMScheduler())
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kwargs)
    if "text_encoder" in index and "vae" in index:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return DiffusionComponents(
            "stable-diffusion",
            UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs),
            scheduler,
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kwargs),
        )
    unet_class = index.get("unet", [None, None])[1]
    if unet_class != "UNet2DModel":
        raise ValueError(
            f"`--model_name_or_path`={path!r} holds a {index.get('_class_name')} with a {unet_class}; "
            "supported are UNet2DModel repos/pipelines and Stable-Diffusion-style pipelines."
        )
    return DiffusionComponents("unet2d", UNet2DModel.from_pretrained(path, subfolder="unet", **kwargs), scheduler)


def tokenize_captions(tokenizer, captions: list[str]) -> torch.Tensor:
    """Padded, truncated ``input_ids`` of the captions (as in diffusers' text-to-image examples)."""
    return tokenizer(
        captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def latent_distribution(components: DiffusionComponents, pixel_values: torch.Tensor):
    """``(mean, std)`` of the latents of these images: the VAE posterior (scaled) for SD, the pixels themselves
    (``std=None``) for a pixel-space UNet. Sampling is left to the caller so its noise can come from one generator."""
    if components.vae is None:
        return pixel_values, None
    posterior = components.vae.encode(pixel_values.to(components.vae.dtype)).latent_dist
    scale = components.vae.config.scaling_factor
    return posterior.mean * scale, posterior.std * scale


def denoiser_conditioning(components: DiffusionComponents, batch: dict) -> dict[str, Any]:
    """The UNet's conditioning keyword arguments for a batch: caption embeddings (SD, computed without gradient),
    class labels (class-conditional UNet2DModel) or ``class_labels=None`` (unconditional)."""
    if components.kind == "stable-diffusion":
        with torch.no_grad():
            return {"encoder_hidden_states": components.text_encoder(batch["input_ids"], return_dict=False)[0]}
    return {"class_labels": batch["group_ids"] if components.class_conditional else None}


def denoiser_prediction(
    components: DiffusionComponents, unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor, batch: dict
) -> torch.Tensor:
    """The (trainable) UNet's prediction for a batch: with class labels, caption embeddings, or unconditional."""
    conditioning = denoiser_conditioning(components, batch)
    return unet(noisy_latents, timesteps, **conditioning, return_dict=False)[0]
