"""Samplers for the PLE penalty: draw a synthetic batch Y from the model whose LoRA weights are H(X).

A sampler is a callable `(peft_model, args, kwargs) -> (args, kwargs)`: it receives the frozen peft model with the
generated weights loaded and the real batch X, and returns a batch the set embedder can read. It always runs under
`torch.no_grad()` with the model in eval mode (the caller sees to it).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class CausalLMSampler:
    """Keep the first `prompt_length` tokens of each real example and sample a continuation of it."""

    def __init__(self, prompt_length: int = 4, max_new_tokens: int | None = None, temperature: float = 1.0):
        if prompt_length < 1:
            raise ValueError(f"`ple_prompt_length` must be >= 1, got {prompt_length}.")
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def __call__(self, peft_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("PLE sampling for a causal LM needs `input_ids` in the batch.")
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        length = min(self.prompt_length, input_ids.shape[1])
        new_tokens = self.max_new_tokens or max(input_ids.shape[1] - length, 1)
        config = peft_model.get_base_model().config
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        sequences = peft_model.generate(
            input_ids=input_ids[:, :length],
            attention_mask=attention_mask[:, :length],
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad_token_id if pad_token_id is not None else 0,
        )
        mask = torch.cat(
            [attention_mask[:, :length], attention_mask.new_ones(sequences.shape[0], sequences.shape[1] - length)],
            dim=1,
        )
        return (), {"input_ids": sequences, "attention_mask": mask}


class DiffusionSampler:
    """Sample a batch of images the size of the real batch with a diffusers scheduler (a private copy of it).

    The real batch's other keyword arguments (e.g. `class_labels` of a class-conditional UNet, `encoder_hidden_states`
    of a text-conditional one) condition the sampling and are passed on with the synthetic batch, so that Y has the
    real batch's class composition / prompts.
    """

    def __init__(self, scheduler, num_inference_steps: int = 20, generator: torch.Generator | None = None):
        self.scheduler = copy.deepcopy(scheduler)
        self.num_inference_steps = num_inference_steps
        self.generator = generator

    def __call__(self, peft_model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        real = kwargs.get("sample", args[0] if args else None)
        if real is None:
            raise ValueError("PLE sampling for a UNet needs the batch of images as `sample`.")
        conditioning = {key: value for key, value in kwargs.items() if key != "sample" and value is not None}
        image = torch.randn(real.shape, generator=self.generator, dtype=real.dtype).to(real.device)
        self.scheduler.set_timesteps(self.num_inference_steps)
        for timestep in self.scheduler.timesteps:
            noise = peft_model(image, timestep.to(real.device), **conditioning).sample
            image = self.scheduler.step(noise, timestep, image).prev_sample
        return (), {"sample": image, **conditioning}
