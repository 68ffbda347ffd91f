"""The self-consumption (PLE) penalty and the constant-hypernetwork detector, as pure tensor functions.

Shared by `HyperLoRAModel` (generated LoRA factors) and the density-model experiments (generated mean / scale), so
both use the same definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

Weights = Mapping[str, torch.Tensor] | torch.Tensor


def flatten_weights(weights: Weights) -> torch.Tensor:
    """One flat float vector from a tensor or a name -> tensor mapping (concatenated in sorted name order)."""
    if isinstance(weights, torch.Tensor):
        return weights.reshape(-1).float()
    if not weights:
        raise ValueError("`weights` is an empty mapping: nothing was generated.")
    return torch.cat([weights[name].reshape(-1).float() for name in sorted(weights)])


def ple_penalty(
    weights_synthetic: Weights,
    weights_real: Weights,
    reduction: str = "mean",
    detach_real: bool = True,
) -> torch.Tensor:
    """D(H(Y), H(X)): squared distance between weights estimated on synthetic samples Y and on real data X.

    `reduction="sum"` is the paper's squared Euclidean norm; `"mean"` divides it by the number of generated entries
    so that λ does not have to shrink with model size. With `detach_real=True` the gradient flows only through the
    synthetic side H(Y): the real-data estimate is the target the model's own samples must reproduce, and the
    penalty cannot pull the real-data fit toward the model's samples. The result is exactly zero when Y = X.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"`reduction` must be 'mean' or 'sum', got {reduction!r}.")
    if isinstance(weights_synthetic, Mapping) != isinstance(weights_real, Mapping):
        raise TypeError("`weights_synthetic` and `weights_real` must both be tensors or both be mappings.")
    if isinstance(weights_real, Mapping) and set(weights_synthetic) != set(weights_real):
        raise ValueError("`weights_synthetic` and `weights_real` name different tensors.")
    synthetic = flatten_weights(weights_synthetic)
    real = flatten_weights(weights_real)
    if detach_real:
        real = real.detach()
    squared = (synthetic - real).pow(2)
    return squared.sum() if reduction == "sum" else squared.mean()


def context_sensitivity(generated: Sequence[Weights]) -> torch.Tensor:
    """How much the generated weights depend on the input set: across-set variance over mean squared norm.

    `generated` holds the weights emitted for several different input sets. Returns
    mean_i ||w_i - w̄||² / mean_i ||w_i||², in [0, 1]; it is 0 for a hypernetwork that ignores its input (the
    degenerate constant solution, a plain LoRA in disguise) and grows with the share of the weights that the
    input set moves.
    """
    if len(generated) < 2:
        raise ValueError(f"`generated` needs weights from at least 2 input sets, got {len(generated)}.")
    stacked = torch.stack([flatten_weights(weights).detach() for weights in generated])
    spread = (stacked - stacked.mean(dim=0)).pow(2).sum(dim=1).mean()
    scale = stacked.pow(2).sum(dim=1).mean()
    if scale == 0:
        return torch.zeros((), dtype=stacked.dtype)
    return spread / scale


def is_constant_hypernetwork(generated: Sequence[Weights], tolerance: float = 1e-8) -> bool:
    """True when `context_sensitivity(generated)` is at most `tolerance`: the weights do not depend on the input."""
    return bool(context_sensitivity(generated) <= tolerance)
