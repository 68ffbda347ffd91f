"""Per-token and per-sequence language-model losses: tensor in, tensor out.

The group objective needs one loss per example, while a causal LM's own forward returns one scalar for the whole
batch. Two ways to the per-token negative log-likelihood, with the same float32 upcast and label shift as
``transformers.loss.loss_utils.ForCausalLMLoss``:

- ``causal_lm_token_losses``: from the logits a forward pass made, with one ``cross_entropy(reduction="none")``
  (the ``(batch, seq_len, vocab)`` logits a plain ``Trainer`` also holds);
- ``chunked_head_token_losses``: from the final hidden states through the output embedding, a chunk of tokens at a
  time, so that no ``(batch, seq_len, vocab)`` tensor exists, in the forward or the backward.

``sequence_losses`` then reduces either to each sequence's token mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses are computed in: float32, or float64 for a float64 model (``ForCausalLMLoss``'s upcast)."""
    return torch.promote_types(dtype, torch.float32)


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
        logits: ``(batch, seq_len, vocab)`` logits (any float dtype; half precision upcast to float32 like
            ``ForCausalLMLoss``).
        labels: ``(batch, seq_len)`` unshifted labels, ``ignore_index`` where a token must not count.

    Returns:
        ``(token_losses, mask)``, both ``(batch, seq_len)``: the loss of predicting ``labels[:, t + 1]`` from position
        ``t`` (0 where ignored) and whether that target counts.
    """
    targets = shift_labels(labels, ignore_index).to(logits.device)
    losses = F.cross_entropy(
        logits.to(loss_dtype(logits.dtype)).reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    return losses.view(targets.shape), targets != ignore_index


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` (``(N, T)`` or ``(N, T, ...)``) over dimension 1, counting only the positions where ``mask``
    (``(N, T)``) is nonzero, and the number of counted positions of each row (``(N,)``).

    A row with no counted position gets mean 0 and count 0. Without ``mask`` every position counts. This one
    reduction serves per-sequence token losses, sentence-embedding mean pooling and the hypernetwork's set encoder.
    """
    if mask is None:
        mask = torch.ones(values.shape[:2], dtype=values.dtype, device=values.device)
    weights = mask.to(values.dtype)
    counts = weights.sum(dim=1)
    weights = weights.reshape(*weights.shape, *([1] * (values.dim() - 2)))
    sums = (values * weights).sum(dim=1)
    return sums / counts.clamp_min(1.0).reshape(-1, *([1] * (values.dim() - 2))), counts


def sequence_losses(token_losses: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean loss of each sequence and its number of counted tokens (``masked_mean`` over the sequence).

    Feeding ``(means, counts)`` to the group objective as ``(per_example_losses, example_weights)`` makes each group's
    loss the mean over the group's *tokens* (the same normalisation as a causal LM's own loss), since
    ``sum_i counts_i * means_i = sum of the group's token losses``. A sequence with no counted token gets mean 0 and
    weight 0.
    """
    return masked_mean(token_losses, mask)


GROUP_LOSS_UNITS = ("token", "sequence")


def group_loss_weights(counts: torch.Tensor, unit: str = "token") -> torch.Tensor:
    """Each sequence's weight in its group's mean (``group_loss_inputs``), from its number of counted tokens: the
    tokens for ``token``, 1 for ``sequence`` (0 for a sequence with no counted token in both)."""
    if unit == "token":
        return counts
    if unit == "sequence":
        return (counts > 0).to(counts.dtype)
    raise ValueError(f"`group_loss_unit` must be one of {GROUP_LOSS_UNITS}, got {unit!r}.")


def group_loss_inputs(
    means: torch.Tensor, counts: torch.Tensor, unit: str = "token"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_example_losses, example_weights)`` for the group objective, from ``sequence_losses``' token means and
    token counts, so that each group's loss is a mean in ``unit``:

    - ``token``: ``(means, counts)``: the mean over the group's tokens (a causal LM's own normalisation).
    - ``sequence``: ``(means * counts, 1)``: the mean over the group's sequences of each sequence's summed NLL. Groups
      whose texts carry the same content in different numbers of tokens (parallel verses in several languages) get
      comparable losses; per token, the group with the most tokens per text is chased (CTC-DRO, Bartelds et al.).
    A sequence with no counted token gets weight 0 in both.
    """
    weights = group_loss_weights(counts, unit)
    return (means if unit == "token" else means * counts.to(means.dtype)), weights


def count_target_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of counted next-token targets of each sequence (``labels[:, 1:] != ignore_index``)."""
    return (labels[..., 1:] != ignore_index).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Per-token losses from hidden states, through the output embedding in chunks of tokens.
# ---------------------------------------------------------------------------------------------------------------------


def transform_logits(logits: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """``softcap * tanh(logit_scale * logits / softcap)`` (Cohere's ``logit_scale``, Gemma 2's final soft-capping),
    in place on ``logits``; the identity when ``logit_scale == 1`` and ``softcap is None``."""
    if logit_scale != 1.0:
        logits.mul_(logit_scale)
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, logit_scale: float, softcap: float | None
) -> torch.Tensor:
    """The float32 (transformed) logits of a chunk of tokens, as the full path makes them: head in the model's dtype,
    then upcast (``ForCausalLMLoss``)."""
    logits = F.linear(hidden, weight, bias)
    return transform_logits(logits.to(loss_dtype(logits.dtype)), logit_scale, softcap)


def _logit_gradient(
    logits: torch.Tensor, log_normalizer: torch.Tensor, targets: torch.Tensor, logit_scale: float, softcap: float | None
) -> torch.Tensor:
    """d loss_t / d (raw head output) of each token, ``(n, vocab)`` float32; overwrites ``logits``.

    ``softmax - onehot`` on the transformed logits, times the derivative of the transform:
    ``1 - (z / softcap)^2`` for the soft-capping (``d/dx c tanh(x/c) = 1 - tanh^2``), ``logit_scale`` for the scale.
    """
    grad = (logits - log_normalizer[:, None]).exp_()
    grad[torch.arange(len(targets), device=grad.device), targets] -= 1.0
    if softcap is not None:
        grad.mul_(logits.div_(softcap).square_().neg_().add_(1.0))
    if logit_scale != 1.0:
        grad.mul_(logit_scale)
    return grad


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``softcap(logit_scale * (hidden @ weight.T + bias))`` against ``targets``, chunk by chunk.

    Forward keeps one ``(chunk, vocab)`` block of logits at a time. Each token's loss depends on its own hidden state
    only, so ``d loss_t / d hidden_t`` is computed in the forward (``(tokens, hidden)``, the size of the hidden
    states) and scaled by the incoming per-token gradient in backward. When the head's weight (or bias) needs a
    gradient (a trained or LoRA'd head), backward recomputes each chunk's logits instead. Autocast state is replayed
    in backward so the recomputation matches the forward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, logit_scale, softcap, with_stats):
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.options = (chunk_size, logit_scale, softcap)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        recompute = need_weight or need_bias
        losses = torch.empty(len(targets), dtype=loss_dtype(hidden.dtype), device=hidden.device)
        log_normalizers = torch.empty_like(losses)
        # Detached per-token statistics (TRL's SFT metrics): entropy of the predicted distribution, top-1 == target.
        entropy = torch.empty_like(losses) if with_stats else None
        is_top1 = torch.empty(len(targets), dtype=torch.bool, device=hidden.device) if with_stats else None
        hidden_grad = None
        if need_hidden and not recompute:
            hidden_grad = torch.empty_like(hidden)
        for start in range(0, len(targets), chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _chunk_logits(hidden[rows], weight, bias, logit_scale, softcap)
            log_normalizer = torch.logsumexp(logits, dim=-1)
            losses[rows] = log_normalizer - logits.gather(1, targets[rows, None]).squeeze(1)
            log_normalizers[rows] = log_normalizer
            if with_stats:
                is_top1[rows] = logits.argmax(dim=-1) == targets[rows]
                probabilities = (logits - log_normalizer[:, None]).exp_()
                entropy[rows] = log_normalizer - (probabilities * logits).sum(dim=-1)
                del probabilities
            if hidden_grad is not None:
                grad = _logit_gradient(logits, log_normalizer, targets[rows], logit_scale, softcap)
                del logits
                hidden_grad[rows] = grad.to(weight.dtype) @ weight
        if hidden_grad is not None:
            ctx.save_for_backward(hidden_grad)
        else:
            ctx.save_for_backward(hidden, weight, bias, targets, log_normalizers)
        ctx.recompute = recompute
        if not with_stats:
            return losses
        ctx.mark_non_differentiable(entropy, is_top1)
        return losses, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_losses, *unused_stat_grads):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if not ctx.recompute:
            (hidden_grad,) = ctx.saved_tensors
            return hidden_grad * grad_losses[:, None].to(hidden_grad.dtype), None, None, None, None, None, None, None
        hidden, weight, bias, targets, log_normalizers = ctx.saved_tensors
        chunk_size, logit_scale, softcap = ctx.options
        device_type, autocast_enabled, autocast_dtype = ctx.autocast
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        accumulate = loss_dtype(weight.dtype)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=accumulate, device=bias.device) if need_bias else None
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_enabled):
            for start in range(0, len(targets), chunk_size):
                rows = slice(start, start + chunk_size)
                logits = _chunk_logits(hidden[rows], weight, bias, logit_scale, softcap)
                grad = _logit_gradient(logits, log_normalizers[rows], targets[rows], logit_scale, softcap)
                del logits
                grad.mul_(grad_losses[rows, None])
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
                grad = grad.to(weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = grad @ weight
                if grad_weight is not None:
                    grad_weight += grad.T.to(accumulate) @ hidden[rows].to(accumulate)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def chunked_head_token_losses(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int = 1024,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    with_stats: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Per-token next-token NLL from the final hidden states, through the output embedding, in chunks of tokens.

    The same values and gradients as ``causal_lm_token_losses(head(hidden_states), labels)`` (label shift, ignored
    tokens, float32 upcast, logit scale and soft-capping applied as the model does), without a
    ``(batch, seq_len, vocab)`` tensor: only the counted tokens go through the head, ``chunk_size`` of them at a time.

    Args:
        hidden_states: ``(batch, seq_len, hidden)`` output of the decoder (after its final norm).
        weight: ``(vocab, hidden)`` output embedding (a tied one, or a LoRA'd one's effective weight).
        labels: ``(batch, seq_len)`` unshifted labels, ``ignore_index`` where a token must not count.
        bias: optional ``(vocab,)`` bias of the output embedding.
        chunk_size: tokens per chunk (peak extra memory is a few ``(chunk_size, vocab)`` float32 blocks).
        logit_scale, softcap: the model's logit multiplier and final soft-capping (``None``: none).

        with_stats: also return the (detached) entropy of each token's predicted distribution and whether its top-1
            token is the target (0 / False where ignored).

    Returns:
        ``(token_losses, mask)`` as ``causal_lm_token_losses`` returns them; ``(token_losses, mask, entropy,
        is_top1)`` with ``with_stats``.
    """
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive number of tokens, got {chunk_size}.")
    targets = shift_labels(labels, ignore_index).to(hidden_states.device)
    mask = targets != ignore_index
    counted = hidden_states[mask]  # (tokens, hidden): only counted targets go through the head
    outputs = _ChunkedHeadCrossEntropy.apply(
        counted, weight, bias, targets[mask], chunk_size, logit_scale, softcap, with_stats
    )
    # `masked_scatter` keeps the result attached to the graph even when no token counts.
    per_token = [x.new_zeros(mask.shape).masked_scatter(mask, x) for x in (outputs if with_stats else (outputs,))]
    if not with_stats:
        return per_token[0], mask
    token_losses, entropy, is_top1 = per_token
    return token_losses, mask, entropy, is_top1
