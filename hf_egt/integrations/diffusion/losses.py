"""Per-example denoising losses and noise-level buckets: pure functions, tensor in, tensor out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the model regresses on: the noise (``epsilon``) or the velocity (``v_prediction``)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unsupported scheduler `prediction_type` {prediction_type!r}; use 'epsilon' or 'v_prediction'.")


def per_example_mse(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each example, shape ``(batch,)``, in float32.

    The shape of the ``--snr_gamma`` branch of diffusers' LoRA example; its mean equals
    ``F.mse_loss(model_pred, target, reduction="mean")`` when all examples have the same size.
    """
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    return loss.mean(dim=tuple(range(1, loss.dim())))


def min_snr_weights(scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023) as in diffusers' examples, per example."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    if scheduler.config.prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights / snr


def noise_buckets(timesteps: torch.Tensor, num_train_timesteps: int, num_buckets: int) -> torch.Tensor:
    """Bucket of each timestep: ``num_buckets`` equal ranges of ``[0, num_train_timesteps)``, low noise first."""
    if num_buckets < 1:
        raise ValueError(f"`num_buckets` must be >= 1, got {num_buckets}.")
    return (timesteps.long() * num_buckets // num_train_timesteps).clamp_(0, num_buckets - 1)
