"""Group-aware training samplers: natural, balanced and temperature (weighted, with replacement), stratified and
homogeneous.

- ``natural``: the dataset's own proportions (the trainer's usual random sampler).
- ``balanced``: every example drawn with probability proportional to ``N / n_g`` and with replacement, so each batch is
  group-balanced *in expectation*: kohpangwei/group_DRO's ``--reweight_groups`` (``data/dro_dataset.py``,
  ``WeightedRandomSampler``), which every command of its README uses and WILDS' GroupDRO asserts.
- ``temperature``: group ``g`` drawn with probability ``p_g ∝ n_g ** alpha`` (``group_sampling_exponent``), with
  replacement: the multilingual baseline (XLM, Conneau & Lample 2019; mBART, mT5 use alpha 0.3-0.7). ``alpha = 1`` is
  the natural proportions (drawn with replacement), ``alpha = 0`` is ``balanced``.
- ``stratified``: the index stream is cut into chunks of one optimizer step (``step_size`` examples over all
  micro-batches and processes); by default (``alpha = 0``) every chunk holds ``step_size // k`` examples of each group
  plus one more for ``step_size % k`` groups drawn at random, so *every* step holds every group (DoReMi's proxy samples
  domains uniformly; its issue #5 shows batches missing domains let the weights collapse). With an ``alpha`` other than
  0, group ``g`` fills the share ``p_g ∝ n_g ** alpha`` of every step: ``floor(p_g * step_size)`` examples, plus one
  more with probability equal to the fraction left (systematic sampling, so a step always holds exactly
  ``step_size``); that is temperature sampling with the shares held exactly in every step instead of in
  expectation, the knob that traces stratified sampling's trade-off between the groups. Within a group, examples are
  drawn without replacement from a reshuffled cycle.

- ``homogeneous``: the index stream is cut into micro-batches (``batch_size`` consecutive indices, the per-device
  batch) that each hold *one* group; the groups take turns, every round giving each group one micro-batch in a random
  order, so each group gets the same number of micro-batches. Within a group, examples are drawn without replacement
  from a reshuffled cycle, as in ``stratified``. It is for a model whose forward depends on the set of rows it sees: a
  HyperLoRA adapter generated from its batch (``hf_egt.integrations.hyper``) then generates each training forward's
  weights from one group's rows, as it does at inference from that group's context set. With several processes,
  accelerate deals whole micro-batches round-robin, so every process's batch stays one group.

``alpha`` (``group_sampling_exponent``) lies in [-1, 1]: 1 is the natural proportions, 0 equal shares, and below 0
the smaller groups get *more* than an equal share. Its default depends on the sampling: 0.5 for ``temperature`` (the
multilingual baseline), 0 for ``stratified`` (equal shares).

All samplers are a pure function of ``(seed, epoch)``: every process draws the same stream (accelerate then deals its
batches round-robin, each process getting its own part), and a resumed run that skips the first batches of an epoch
sees exactly the batches it would have seen. ``set_epoch`` is called by ``Trainer`` and accelerate each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

GROUP_SAMPLINGS = ("natural", "balanced", "temperature", "stratified", "homogeneous")
DEFAULT_EXPONENTS = {"temperature": 0.5, "stratified": 0.0}  # alpha when `group_sampling_exponent` is None


def check_sampling_exponent(exponent: float | None) -> None:
    """Refuse an ``alpha`` outside [-1, 1] (``None`` is the sampling's default), naming the option."""
    if exponent is not None and not -1.0 <= exponent <= 1.0:
        raise ValueError(
            "`group_sampling_exponent` must be in [-1, 1] (1: natural proportions, 0: equal shares, below 0: the "
            f"smaller groups favoured beyond equal), got {exponent}."
        )


def sampling_shares(group_ids: torch.Tensor, num_groups: int, exponent: float) -> torch.Tensor:
    """Each group's share ``p_g = n_g ** alpha / sum_h n_h ** alpha`` (float64) of a temperature draw or a stratified
    step."""
    check_sampling_exponent(exponent)
    weights = torch.bincount(group_ids, minlength=num_groups).double().pow(exponent)
    return weights / weights.sum()


def balanced_example_weights(group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-example weights ``N / n_g`` (group_DRO's ``--reweight_groups``): each group gets the same total weight."""
    return temperature_example_weights(group_ids, num_groups, 0.0)


def temperature_example_weights(group_ids: torch.Tensor, num_groups: int, exponent: float) -> torch.Tensor:
    """Per-example weights ``N * n_g ** (alpha - 1)``: group ``g``'s total weight is ``N * n_g ** alpha``, so a
    weighted draw picks group ``g`` with probability ``n_g ** alpha / sum_h n_h ** alpha``."""
    check_sampling_exponent(exponent)
    counts = torch.bincount(group_ids, minlength=num_groups).double()
    return len(group_ids) * counts[group_ids].pow(exponent - 1.0)


def stratified_quotas(
    num_groups: int, step_size: int, generator: torch.Generator, shares: torch.Tensor | None = None
) -> torch.Tensor:
    """How many examples of each group one step of ``step_size`` holds.

    Equal shares (``shares=None``): ``step_size // k`` each, plus one for ``step_size % k`` groups drawn at random.
    Else ``floor(p_g * step_size)`` each, plus one for group ``g`` with probability equal to its fraction left, by
    systematic sampling in a random order of the groups: exactly ``step_size`` in all, ``p_g * step_size`` on
    average.
    """
    order = torch.randperm(num_groups, generator=generator)
    if shares is None:
        quotas = torch.full((num_groups,), step_size // num_groups, dtype=torch.long)
        quotas[order[: step_size % num_groups]] += 1
        return quotas
    expected = shares.double() * step_size
    quotas = expected.floor().long()
    extra = step_size - int(quotas.sum())
    if extra > 0:
        ends = (expected - quotas)[order].cumsum(0)  # the fractions left, laid end to end in a random order
        points = torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(extra, dtype=torch.float64)
        # each fraction is < 1, so no interval holds two points: `extra` distinct groups
        chosen = torch.searchsorted(ends, points, right=True).clamp(max=num_groups - 1)
        quotas[order[chosen]] += 1
    return quotas


class _GroupSampler(torch.utils.data.Sampler[int]):
    def __init__(self, group_ids: Sequence[int] | torch.Tensor, num_groups: int | None = None, seed: int = 0):
        group_ids = torch.as_tensor(group_ids, dtype=torch.long).flatten()
        if group_ids.numel() == 0:
            raise ValueError("`group_ids` is empty: the training dataset has no rows.")
        self.num_groups = int(group_ids.max()) + 1 if num_groups is None else num_groups
        if group_ids.min() < 0 or group_ids.max() >= self.num_groups:
            raise ValueError(f"`group_ids` must lie in 0..{self.num_groups - 1}, got {group_ids.unique().tolist()}.")
        empty = (torch.bincount(group_ids, minlength=self.num_groups) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"Group id(s) {empty} have no example: a sampler cannot draw them.")
        self.group_ids = group_ids
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)


class TemperatureGroupSampler(_GroupSampler):
    """``len(group_ids)`` indices drawn with replacement, group ``g`` with probability ``∝ n_g ** exponent`` (see the
    module docstring)."""

    def __init__(self, group_ids, num_groups: int | None = None, seed: int = 0, exponent: float = 0.0):
        super().__init__(group_ids, num_groups, seed)
        self.weights = temperature_example_weights(self.group_ids, self.num_groups, exponent)

    def __len__(self) -> int:
        return len(self.group_ids)

    def __iter__(self) -> Iterator[int]:
        yield from torch.multinomial(self.weights, len(self), replacement=True, generator=self._generator()).tolist()


class BalancedGroupSampler(TemperatureGroupSampler):
    """``len(group_ids)`` indices drawn with replacement with probability ``∝ N / n_g`` (exponent 0)."""

    def __init__(self, group_ids, num_groups: int | None = None, seed: int = 0):
        super().__init__(group_ids, num_groups, seed, exponent=0.0)


class StratifiedGroupSampler(_GroupSampler):
    """Chunks of ``step_size`` indices, each holding every group in equal shares, or in shares ``∝ n_g ** exponent``
    (see the module docstring).

    Args:
        group_ids: each example's group id.
        step_size: examples per optimizer step over all processes (batch size × accumulation × processes); with equal
            shares, at least the number of groups.
        num_groups: number of groups (default: the largest id + 1).
        seed: seed of the stream (with the epoch).
        exponent: ``alpha`` of the shares, in [-1, 1]; 0 (default) is equal shares.
    """

    def __init__(self, group_ids, step_size: int, num_groups: int | None = None, seed: int = 0, exponent: float = 0.0):
        super().__init__(group_ids, num_groups, seed)
        self.shares = None if exponent == 0.0 else sampling_shares(self.group_ids, self.num_groups, exponent)
        if self.shares is None and step_size < self.num_groups:
            raise ValueError(
                f"`step_size`={step_size} examples per optimizer step cannot hold all {self.num_groups} groups: raise "
                "the batch size (or gradient accumulation) to at least the number of groups, or use balanced sampling."
            )
        self.step_size = step_size

    def __len__(self) -> int:
        return -(-len(self.group_ids) // self.step_size) * self.step_size  # whole steps, at least the dataset's size

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        members = [torch.nonzero(self.group_ids == g).flatten() for g in range(self.num_groups)]
        cycles = [m[torch.randperm(len(m), generator=generator)] for m in members]
        positions = [0] * self.num_groups
        for _ in range(len(self) // self.step_size):
            chunk = []
            quotas = stratified_quotas(self.num_groups, self.step_size, generator, self.shares)
            for g, quota in enumerate(quotas.tolist()):
                for _ in range(quota):
                    if positions[g] == len(cycles[g]):  # a group used up: reshuffle it and start again
                        cycles[g], positions[g] = members[g][torch.randperm(len(members[g]), generator=generator)], 0
                    chunk.append(int(cycles[g][positions[g]]))
                    positions[g] += 1
            order = torch.randperm(len(chunk), generator=generator).tolist()
            yield from (chunk[i] for i in order)


class HomogeneousGroupSampler(_GroupSampler):
    """Micro-batches of ``batch_size`` consecutive indices, each from one group, the groups taking turns (see the
    module docstring).

    Args:
        group_ids: each example's group id.
        batch_size: indices per micro-batch (the per-device training batch size).
        num_groups: number of groups (default: the largest id + 1).
        seed: seed of the stream (with the epoch).
    """

    def __init__(self, group_ids, batch_size: int, num_groups: int | None = None, seed: int = 0):
        super().__init__(group_ids, num_groups, seed)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
        self.batch_size = batch_size

    @property
    def rounds(self) -> int:
        """Rounds per epoch (one micro-batch of each group per round): enough to draw at least the dataset's size."""
        return -(-len(self.group_ids) // (self.batch_size * self.num_groups))

    def __len__(self) -> int:
        return self.rounds * self.num_groups * self.batch_size

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        members = [torch.nonzero(self.group_ids == g).flatten() for g in range(self.num_groups)]
        cycles = [m[torch.randperm(len(m), generator=generator)] for m in members]
        positions = [0] * self.num_groups
        for _ in range(self.rounds):
            for g in torch.randperm(self.num_groups, generator=generator).tolist():
                for _ in range(self.batch_size):
                    if positions[g] == len(cycles[g]):  # a group used up: reshuffle it and start again
                        cycles[g], positions[g] = members[g][torch.randperm(len(members[g]), generator=generator)], 0
                    yield int(cycles[g][positions[g]])
                    positions[g] += 1


def group_sampler(
    sampling: str,
    group_ids,
    num_groups: int,
    seed: int,
    step_size: int | None = None,
    exponent: float | None = None,
    batch_size: int | None = None,
) -> torch.utils.data.Sampler | None:
    """The sampler for ``sampling`` (``None`` for ``natural``: keep the caller's default random sampler); ``exponent``
    is the alpha of ``temperature`` and ``stratified`` (``None``: ``DEFAULT_EXPONENTS``), ``step_size`` the examples
    per optimizer step of ``stratified`` and ``batch_size`` the micro-batch (per-device batch) size of
    ``homogeneous``."""
    if sampling not in GROUP_SAMPLINGS:
        raise ValueError(f"`group_sampling` must be one of {GROUP_SAMPLINGS}, got {sampling!r}.")
    if sampling == "natural":
        return None
    if sampling == "balanced":
        return BalancedGroupSampler(group_ids, num_groups, seed)
    if sampling == "homogeneous":
        if batch_size is None:
            raise ValueError("Homogeneous sampling needs `batch_size` (the per-device training batch size).")
        return HomogeneousGroupSampler(group_ids, batch_size, num_groups, seed)
    alpha = DEFAULT_EXPONENTS[sampling] if exponent is None else exponent
    if sampling == "temperature":
        return TemperatureGroupSampler(group_ids, num_groups, seed, alpha)
    if step_size is None:
        raise ValueError("Stratified sampling needs `step_size` (examples per optimizer step over all processes).")
    return StratifiedGroupSampler(group_ids, step_size, num_groups, seed, alpha)
