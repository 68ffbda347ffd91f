"""Per-token and per-sequence language-model losses: tensor in, tensor out.

The group objective needs one loss per example, while a causal LM's own forward returns one scalar for the whole
batch. These functions compute the per-token negative log-likelihood from the logits the forward pass already made,
with one ``cross_entropy(reduction="none")`` and the same float32 upcast and label shift as
``transformers.loss.loss_utils.ForCausalLMLoss`` (so no extra full-vocabulary copy beyond the one a plain ``Trainer``
makes), then reduce it per sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets aligned with the logits: ``labels[..., 1:]`` padded on the right with ``ignore_index``.

    Padding the labels (instead of slicing the logits) keeps the logits uncopied, as ``ForCausalLMLoss`` does.
    """
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def causal_lm_token_losses(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token negative log-likelihood of a causal LM.

    Args:
        logits: ``(batch, seq_len, vocab)`` logits (any float dtype; upcast to float32 like ``ForCausalLMLoss``).
        labels: ``(batch, seq_len)`` unshifted labels, ``ignore_index`` where a token must not count.

    Returns:
        ``(token_losses, mask)``, both ``(batch, seq_len)``: the loss of predicting ``labels[:, t + 1]`` from position
        ``t`` (0 where ignored) and whether that target counts.
    """
    targets = shift_labels(labels, ignore_index).to(logits.device)
    losses = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return losses.view(targets.shape), targets != ignore_index


def sequence_losses(token_losses: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean loss of each sequence and its number of counted tokens.

    Feeding ``(means, counts)`` to the group objective as ``(per_example_losses, example_weights)`` makes each group's
    loss the mean over the group's *tokens* (the same normalisation as a causal LM's own loss), since
    ``sum_i counts_i * means_i = sum of the group's token losses``. A sequence with no counted token gets mean 0 and
    weight 0.
    """
    mask = mask.to(token_losses.dtype)
    sums = (token_losses * mask).sum(dim=-1)
    counts = mask.sum(dim=-1)
    return sums / counts.clamp_min(1.0), counts


def count_target_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of counted next-token targets of each sequence (``labels[:, 1:] != ignore_index``)."""
    return (labels[..., 1:] != ignore_index).sum(dim=-1)
