"""Diffusion training step: min-max vs ERM with the same code and model, and our ERM path vs diffusers' plain loss.

One optimizer step of ``hf_egt.integrations.diffusion.train`` (``draw_window_inputs`` + ``accumulate_window`` + AdamW)
on a class-conditional ``UNet2DModel`` with LoRA on attention and convolutions, 10 groups, 4 noise buckets. The variants
are timed interleaved in one process, each taking every position of a round in turn (the first and last positions
of a round run measurably slower on a busy CPU); each figure is the median step time.

    PYTHONPATH=$PWD python benchmarks/bench_diffusion.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def _setup(resolution: int, channels: tuple[int, int], device: str):
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel

    from hf_egt.integrations.diffusion.lora import add_unet_lora, lora_parameters, unet_lora_config
    from hf_egt.integrations.diffusion.models import DiffusionComponents

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=resolution, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=channels,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=16, num_class_embeds=10,
    ).requires_grad_(False)  # fmt: skip
    components = DiffusionComponents("unet2d", unet, DDPMScheduler(num_train_timesteps=1000))
    model = add_unet_lora(unet, unet_lora_config(8, lora_conv=True))
    accelerator = Accelerator(cpu=device == "cpu")
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, components, model, optimizer


def _window(batch_size: int, accumulation: int, resolution: int, device):
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "pixel_values": torch.rand(batch_size, 1, resolution, resolution, generator=generator)
            .mul(2)
            .sub(1)
            .to(device),
            "group_ids": torch.randint(0, 10, (batch_size,), generator=generator).to(device),
        }
        for _ in range(accumulation)
    ]


def run(quick: bool = False) -> list[dict]:
    from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective
    from hf_egt.integrations.diffusion.models import denoiser_prediction
    from hf_egt.integrations.diffusion.train import accumulate_window, draw_window_inputs, window_generator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    resolution, channels = (8, (16, 32)) if quick else (16, (32, 64))
    batch_size, accumulation = (32, 2) if quick else (64, 2)
    rounds, warmup = (15, 3) if quick else (30, 6)
    accelerator, components, model, optimizer = _setup(resolution, channels, device)
    window = _window(batch_size, accumulation, resolution, accelerator.device)
    objectives = {
        mode: NoiseLevelGroupObjective(4, num_groups=10, objective=mode, group_step_size=0.5)
        for mode in ("erm", "minmax")
    }

    def ours(mode: str):
        def step(index: int) -> None:
            inputs = draw_window_inputs(components, window, 4, window_generator(0, index, 0), torch.float32)
            accumulate_window(accelerator, components, model, objectives[mode], window, inputs)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            objectives[mode].end_window()

        return step

    def plain_diffusers(index: int) -> None:
        """diffusers' example loss: F.mse_loss(..., reduction="mean") per micro-batch, divided by accumulation."""
        inputs = draw_window_inputs(components, window, 4, window_generator(0, index, 0), torch.float32)
        for i, (batch, x) in enumerate(zip(window, inputs)):
            with accelerator.no_sync(model) if i < len(window) - 1 else nullcontext():
                prediction = denoiser_prediction(components, model, x["noisy"], x["timesteps"], batch)
                accelerator.backward(F.mse_loss(prediction.float(), x["target"].float()) / len(window))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants = {"erm": ours("erm"), "minmax": ours("minmax"), "plain": plain_diffusers}
    times = {name: [] for name in variants}
    for index in range(warmup + rounds):
        names = list(variants)
        order = names[index % 3 :] + names[: index % 3]  # every variant takes every position in turn
        for name in order:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            variants[name](index)
            if device == "cuda":
                torch.cuda.synchronize()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    setting = (
        f"{device}, UNet2DModel {channels} at {resolution}x{resolution}, LoRA r=8 attn+conv, batch {batch_size}x"
        f"{accumulation} accumulation, 10 groups, 4 noise buckets, median of {rounds} interleaved steps"
    )
    minmax_ratio = median["erm"] / median["minmax"]
    erm_ratio = median["plain"] / median["erm"]
    return [
        {
            "benchmark": "diffusion step: min-max vs ERM (same code)",
            "ours": 1.0 / median["minmax"],
            "peer": 1.0 / median["erm"],
            "ratio": minmax_ratio,
            "unit": "steps/s",
            "target": ">= 0.97x ERM throughput",
            "met": minmax_ratio >= 0.97,
            "notes": setting,
        },
        {
            "benchmark": "diffusion step: our ERM path vs diffusers' F.mse_loss",
            "ours": 1.0 / median["erm"],
            "peer": 1.0 / median["plain"],
            "ratio": erm_ratio,
            "unit": "steps/s",
            "target": "informational",
            "met": None,
            "notes": setting,
        },
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
