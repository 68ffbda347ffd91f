"""Per-group sampling and image grids (validation, and the EGT experiment's generated sets)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


@torch.no_grad()
def sample_unet2d(
    unet,
    scheduler_config,
    num_images: int,
    class_labels: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Images in [-1, 1] from a pixel-space UNet with a DDIM sampler built from the training scheduler's config.

    ``class_labels`` (one per image) condition a class-conditional UNet. ``unet`` may be a peft-wrapped model.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps)
    config = unet.config
    shape = (num_images, config.in_channels, config.sample_size, config.sample_size)
    sample = torch.randn(shape, generator=generator).to(device)
    if class_labels is not None:
        class_labels = class_labels.to(device)
    dtype = next(unet.parameters()).dtype
    for t in scheduler.timesteps:
        timesteps = torch.full((num_images,), int(t), device=device, dtype=torch.long)
        prediction = unet(sample.to(dtype), timesteps, class_labels=class_labels, return_dict=False)[0]
        sample = scheduler.step(prediction.float(), t, sample, generator=generator).prev_sample
    return sample.clamp(-1, 1).cpu()


@torch.no_grad()
def sample_stable_diffusion(
    components, unet, prompts: list[str], num_inference_steps: int = 20, generator=None, device="cpu"
) -> torch.Tensor:
    """Images in [-1, 1] from a Stable Diffusion pipeline assembled around the trained UNet (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet,
        scheduler=components.noise_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(prompts, num_inference_steps=num_inference_steps, generator=generator, output_type="pt").images
    return images.cpu() * 2 - 1


def image_grid(rows: list[torch.Tensor]) -> Image.Image:
    """One row per tensor of images in [-1, 1] (``(n, C, H, W)``, same n), as a PIL image."""
    grid = torch.cat([torch.cat(list(images), dim=-1) for images in rows], dim=-2)  # (C, rows*H, n*W)
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array))
