"""The min-max group objective (group DRO) and its baselines.

One implementation serves the language-model trainer, the diffusion script and the hypernetwork.

The objective turns per-example losses and group ids into a scalar ``loss = sum_g q_g * L_g``, where ``L_g`` is the
(optionally weighted) mean loss of group ``g`` and ``q`` lies on the simplex. The mode decides ``q``:

- ``erm``: the plain (token-)mean over all examples, i.e. ``q_g = n_g / n``.
- ``reweight``: inverse group frequency, i.e. ``q_g = 1 / |present groups|`` (importance reweighting baseline).
- ``minmax``: exponentiated-gradient group DRO (Sagawa et al., 2020): ``q <- softmax(log q + eta * L * present)``.
- ``worst``: all weight on the present group with the largest (last seen) loss; a group never seen comes first.
- ``ema``: ``q = softmax(ema(L) / temperature)`` with an exponential moving average of the group losses.

Two ways to drive it:

1. ``objective(losses, group_ids)`` on a single batch, in the order of the reference implementation
   (kohpangwei/group_DRO): update the state with the batch's group losses, then weight the batch with the new ``q``.
2. Over a gradient-accumulation window (and across processes): ``begin_window`` fixes ``q`` for the whole optimizer
   step from the state and the window's group counts, ``window_loss`` normalises each micro-batch by the *window's*
   group counts, and ``end_window`` updates the state once from the window's all-reduced group sums. The result does
   not depend on how the window is split into micro-batches or processes. Compared with (1) on a single batch, the
   adaptive modes use the weights of the previous step (the update lands after the step, not before); ``erm`` and
   ``reweight`` are identical in both.

Options that make min-max usable on small, noisy batches (each from a named source):

- ``group_loss_estimate`` (``batch`` | ``last`` | ``ema``): what the update sees of each group. ``batch`` is the
  reference update (kohpangwei/group_DRO ``loss.py``: an absent group has loss 0, so its weight shrinks). ``last``
  keeps an absent group's last score (DoReMi, ``doremi/trainer.py``: ``perdomain_scores`` are only overwritten for the
  domains present); ``ema`` is a moving average updated for the present groups only (group_DRO's ``--btl`` loss
  tracking, decay ``group_ema_decay``). A group never seen yet is left out of the update.
- ``group_weight_floor`` ``c`` (DoReMi's ``reweight_eps``): after each update ``q <- (1 - c) q + c / k``, so no group's
  weight falls below ``c / k`` and shared learning does not stop.
- excess loss (DoReMi): pass ``reference_losses`` (per-example losses of a reference model) with the losses; the update
  then scores each group with the (weighted) mean of ``clip(l - l_ref, min=0)`` instead of its raw loss, so a group is
  not chased for its irreducible entropy. The training loss stays ``sum_g q_g L_g`` of the raw losses. DoReMi clips
  per token; here the clip is per example (sequence token means), which is what a cached per-example reference gives.
- ``group_sizes``: training-set group sizes for the adjustment ``C / sqrt(n_g)``, applied to *every* group as in
  group_DRO's ``LossComputer`` (without them, the window's counts and present groups are used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hf_egt.core.groups import group_means, group_sums
from hf_egt.core.vocabulary import renamed_attribute, renamed_keywords, renamed_state_keys

LOSS_ESTIMATES = ("batch", "last", "ema")
# Old keyword (and attribute, and state key) -> the name every surface uses (EGTConfig, the command line); the old
# ones go in REMOVAL_VERSION.
RENAMED_KEYWORDS = {
    "mode": "objective",
    "step_size": "group_step_size",
    "adjustment": "group_adjustment",
    "ema_decay": "group_ema_decay",
    "temperature": "group_temperature",
    "loss_estimate": "group_loss_estimate",
    "weight_floor": "group_weight_floor",
}


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: tensor in, tensor out.
# ---------------------------------------------------------------------------------------------------------------------


def exponentiated_gradient_step(
    log_weights: torch.Tensor, group_losses: torch.Tensor, present: torch.Tensor, step_size: float
) -> torch.Tensor:
    """One group-DRO update in log space: ``log softmax(log q + step_size * L * present)``.

    Working in log space keeps the weights finite and normalised for any loss scale (no ``exp`` of a large number).
    """
    return torch.log_softmax(log_weights + step_size * group_losses * present.to(group_losses.dtype), dim=0)


def generalization_adjustment(counts: torch.Tensor, adjustment: float) -> torch.Tensor:
    """The ``C / sqrt(n_g)`` term of Sagawa et al. (0 for groups of zero count)."""
    if adjustment == 0:
        return torch.zeros_like(counts)
    return torch.where(counts > 0, adjustment / counts.clamp_min(1e-12).sqrt(), torch.zeros_like(counts))


def weighted_group_loss(
    per_example_losses: torch.Tensor,
    group_ids: torch.Tensor,
    group_weights: torch.Tensor,
    group_counts: torch.Tensor,
    example_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_i q[g_i] * w_i * l_i / n[g_i]``: the weighted sum of group means when ``group_counts`` are this batch's.

    With ``group_counts`` taken over a larger set (an accumulation window, all processes), the sum of this function
    over that set's parts equals the weighted group loss of the whole set.
    """
    scale = group_weights / group_counts.clamp_min(torch.finfo(group_weights.dtype).tiny)
    scale = torch.where(group_counts > 0, scale, torch.zeros_like(scale)).to(per_example_losses.dtype)
    contributions = per_example_losses * scale[group_ids]
    if example_weights is not None:
        contributions = contributions * example_weights.to(per_example_losses.dtype)
    return contributions.sum()


def mix_with_uniform(weights: torch.Tensor, floor: float) -> torch.Tensor:
    """DoReMi's smoothing ``(1 - c) q + c / k``: every weight stays at least ``c / k``."""
    if floor == 0:
        return weights
    return (1.0 - floor) * weights + floor / weights.numel()


def excess_losses(per_example_losses: torch.Tensor, reference_losses: torch.Tensor) -> torch.Tensor:
    """DoReMi's excess loss ``clip(l - l_ref, min=0)``: how much worse than the reference each example is modelled."""
    return (per_example_losses - reference_losses.to(per_example_losses.dtype)).clamp_min(0.0)


def track_group_losses(
    estimates: torch.Tensor, seen: torch.Tensor, group_losses: torch.Tensor, present: torch.Tensor, decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the present groups' losses into running estimates; absent groups keep theirs.

    A group's first loss replaces its estimate; later ones are blended ``decay * old + (1 - decay) * new`` (decay 0
    keeps the last seen loss). Returns the new estimates and the mask of groups seen so far.
    """
    blended = decay * estimates + (1 - decay) * group_losses
    first = present & ~seen
    estimates = torch.where(first, group_losses, torch.where(present, blended, estimates))
    return estimates, seen | present


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a detached statistic over all processes (no-op without an initialised process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        reduced = tensor.detach().clone()
        if torch.distributed.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
            reduced = reduced.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.SUM)
        tensor = reduced.to(tensor.device)
    return tensor


# ---------------------------------------------------------------------------------------------------------------------
# Modes: how each one sets the group weights.
# ---------------------------------------------------------------------------------------------------------------------


class ObjectiveMode:
    """How one mode of ``GroupObjective`` sets the group weights ``q``: the weights its state holds, the weights it
    applies to a batch (or window) with given group counts, and how it folds group losses into its state.

    The base class is the static case: uniform state weights, no state update.
    """

    def state_weights(self, objective: GroupObjective) -> torch.Tensor:
        """The weights held in ``objective``'s state (``GroupObjective.weights``)."""
        return torch.full((objective.num_groups,), 1.0 / objective.num_groups, dtype=torch.float64)

    def step_weights(self, objective: GroupObjective, counts: torch.Tensor) -> torch.Tensor:
        """The weights applied to a batch (or window) with these group counts (on ``counts``' device)."""
        return self.state_weights(objective).to(counts.device)

    def update(
        self, objective: GroupObjective, group_losses: torch.Tensor, present: torch.Tensor, adjustment: torch.Tensor
    ) -> None:
        """Fold one batch's (or window's) group losses, already checked finite, into ``objective``'s state."""


class ERMMode(ObjectiveMode):
    """``q_g = n_g / n``: the plain (token-)mean over all examples."""

    def step_weights(self, objective, counts):
        return counts / counts.sum().clamp_min(torch.finfo(counts.dtype).tiny)


class ReweightMode(ObjectiveMode):
    """``q_g = 1 / |present groups|``: inverse group frequency (importance reweighting)."""

    def step_weights(self, objective, counts):
        present = counts > 0
        return present.double() / present.sum().clamp_min(1)


class MinMaxMode(ObjectiveMode):
    """Exponentiated-gradient group DRO on the groups' scores (``group_loss_estimate``), with the adjustment and
    floor."""

    def state_weights(self, objective):
        return objective.log_weights.exp()

    def update(self, objective, group_losses, present, adjustment):
        if objective.group_loss_estimate == "batch":
            scores, included = group_losses * present, present
        else:
            decay = objective.group_ema_decay if objective.group_loss_estimate == "ema" else 0.0
            objective.ema_losses, objective.ema_initialized = track_group_losses(
                objective.ema_losses, objective.ema_initialized, group_losses, present, decay
            )
            scores, included = objective.ema_losses, objective.ema_initialized
        if objective.group_sizes is not None:
            exponent = scores * included + adjustment
            included = torch.ones_like(included)
        else:
            exponent = (scores + adjustment) * included
        log_weights = exponentiated_gradient_step(objective.log_weights, exponent, included, objective.group_step_size)
        objective.log_weights = mix_with_uniform(log_weights.exp(), objective.group_weight_floor).log()


class EMAMode(ObjectiveMode):
    """``q = softmax(ema(L) / temperature)``, mixed with uniform by the floor."""

    decay_attribute: str | None = "group_ema_decay"

    def state_weights(self, objective):
        return mix_with_uniform(
            torch.softmax(objective.ema_losses / objective.group_temperature, dim=0), objective.group_weight_floor
        )

    def update(self, objective, group_losses, present, adjustment):
        decay = getattr(objective, self.decay_attribute) if self.decay_attribute else 0.0
        objective.ema_losses, objective.ema_initialized = track_group_losses(
            objective.ema_losses, objective.ema_initialized, group_losses + adjustment, present, decay
        )


class WorstMode(EMAMode):
    """All weight on the present group with the largest last-seen loss (an EMA with decay 0); a group never seen
    ranks first."""

    decay_attribute = None

    def state_weights(self, objective):
        every_group = torch.ones(objective.num_groups, dtype=torch.bool)
        return mix_with_uniform(self.one_hot(objective, every_group), objective.group_weight_floor)

    def step_weights(self, objective, counts):
        weights = self.one_hot(objective, (counts > 0).cpu())
        return mix_with_uniform(weights, objective.group_weight_floor).to(counts.device)

    @staticmethod
    def one_hot(objective: GroupObjective, present: torch.Tensor) -> torch.Tensor:
        """One-hot on the present group with the largest last-seen loss (never-seen groups rank first)."""
        if not present.any():
            return torch.zeros(objective.num_groups, dtype=torch.float64)
        losses = objective.ema_losses
        scores = torch.where(objective.ema_initialized, losses, torch.full_like(losses, math.inf))
        scores = torch.where(present, scores, torch.full_like(scores, -math.inf))
        return torch.nn.functional.one_hot(scores.argmax(), objective.num_groups).to(torch.float64)


# name -> mode, as ``hf_egt.core.metrics.DIVERGENCES`` is for divergences; a new mode is one class and one entry.
OBJECTIVE_MODE_RULES: dict[str, ObjectiveMode] = {
    "erm": ERMMode(),
    "reweight": ReweightMode(),
    "minmax": MinMaxMode(),
    "worst": WorstMode(),
    "ema": EMAMode(),
}
OBJECTIVE_MODES = tuple(OBJECTIVE_MODE_RULES)


# ---------------------------------------------------------------------------------------------------------------------
# Group labels.
# ---------------------------------------------------------------------------------------------------------------------


class GroupLabels:
    """A fixed mapping between group labels (``str`` or ``int``) and ids ``0 .. num_groups - 1``."""

    def __init__(self, labels: Sequence[str | int]):
        labels = list(labels)
        if not labels:
            raise ValueError("`groups` must name at least one group.")
        if len(set(labels)) != len(labels):
            raise ValueError(f"`groups` has duplicate labels: {labels}.")
        self.labels = labels
        self._ids = {label: index for index, label in enumerate(labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"GroupLabels({self.labels!r})"

    def encode(self, group_labels: torch.Tensor | Sequence[str | int], device: torch.device | None = None):
        """Map labels to a ``LongTensor`` of ids.

        A tensor is taken as ids already (range-checked); a Python sequence as labels. Trainers encode a dataset's
        labels once and then pass id tensors.
        """
        if isinstance(group_labels, torch.Tensor):
            if group_labels.is_floating_point() or group_labels.is_complex():
                raise TypeError(f"group ids must be an integer tensor, got {group_labels.dtype}.")
            ids = group_labels.long()
            if ids.numel() and (ids.min() < 0 or ids.max() >= len(self)):
                bad = ids[(ids < 0) | (ids >= len(self))][0].item()
                raise ValueError(f"Group id {bad} is out of range; valid ids are 0..{len(self) - 1} for {self.labels}.")
            return ids.to(device) if device is not None else ids
        ids = []
        for label in group_labels:
            if label not in self._ids:
                raise ValueError(self._unknown_message(label))
            ids.append(self._ids[label])
        return torch.tensor(ids, dtype=torch.long, device=device)

    def _unknown_message(self, label) -> str:
        return f"Unknown group label {label!r}; known labels are {self.labels}."


# ---------------------------------------------------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class GroupObjectiveOutput:
    """What one call of the objective returns.

    Attributes:
        loss: the scalar to backpropagate.
        group_losses: per-group (weighted) mean losses of the batch, detached, 0 for absent groups.
        group_counts: per-group total example weight in the batch (the denominators of ``group_losses``).
        weights: the group weights ``q`` used for ``loss``.
    """

    loss: torch.Tensor
    group_losses: torch.Tensor
    group_counts: torch.Tensor
    weights: torch.Tensor


class GroupObjective:
    """Min-max (group DRO) objective and its baselines over a fixed set of groups.

    Args:
        num_groups: number of groups; optional when ``groups`` is given.
        objective: one of ``OBJECTIVE_MODES``: ``erm``, ``reweight``, ``minmax``, ``worst``, ``ema``.
        group_step_size: exponentiated-gradient step size ``eta`` (``minmax``).
        groups: the group labels (``str`` or ``int``), in id order. Defaults to ``0 .. num_groups - 1``.
        group_adjustment: generalisation adjustment ``C``: ``C / sqrt(n_g)`` is added to ``L_g`` in the update.
        group_ema_decay: decay of the moving average of group losses (``ema``).
        group_temperature: softmax temperature on the moving average (``ema``).
        reduce_across_processes: all-reduce group statistics when ``torch.distributed`` is initialised.
        group_loss_estimate: what the ``minmax`` update sees of each group: ``batch`` (this step's loss, 0 when
            absent, as the reference), ``last`` (absent groups keep their last score, as DoReMi) or ``ema`` (moving
            average of the present groups' scores with ``group_ema_decay``, as group_DRO's ``--btl``).
        group_weight_floor: DoReMi's ``c`` in ``[0, 1)``: the weights are mixed ``(1 - c) q + c / k`` with uniform.
        group_sizes: training-set size of each group, in id order; the adjustment then uses them for every group.

    The keywords, the attributes and the keys of ``state_dict`` (and of the saved file) are the names of ``EGTConfig``
    and the command line (``objective.objective``, ``objective.group_step_size``...). The old names (``mode``,
    ``step_size``, ``adjustment``, ``ema_decay``, ``temperature``, ``loss_estimate``, ``weight_floor``) still work for
    one release, with a ``FutureWarning``: as keywords, as attributes, and as the keys of a state saved before.

    Example:
        >>> objective = GroupObjective(groups=["a", "b"], objective="minmax", group_step_size=0.1)
        >>> out = objective(torch.tensor([1.0, 2.0, 3.0]), ["a", "b", "b"])
        >>> out.loss.backward()  # doctest: +SKIP
    """

    @renamed_keywords(RENAMED_KEYWORDS)
    def __init__(
        self,
        num_groups: int | None = None,
        objective: str = "minmax",
        group_step_size: float = 0.01,
        groups: Sequence[str | int] | None = None,
        group_adjustment: float = 0.0,
        group_ema_decay: float = 0.9,
        group_temperature: float = 1.0,
        reduce_across_processes: bool = True,
        group_loss_estimate: str = "batch",
        group_weight_floor: float = 0.0,
        group_sizes: Sequence[float] | torch.Tensor | None = None,
    ):
        if objective not in OBJECTIVE_MODES:
            raise ValueError(f"`objective` must be one of {OBJECTIVE_MODES}, got {objective!r}.")
        if groups is None and num_groups is None:
            raise ValueError("Pass `num_groups` or `groups`.")
        if groups is None:
            groups = list(range(num_groups))
        self.group_labels = GroupLabels(groups)
        if num_groups is not None and num_groups != len(self.group_labels):
            raise ValueError(f"`num_groups`={num_groups} but `groups` names {len(self.group_labels)} groups.")
        if group_step_size < 0 or not math.isfinite(group_step_size):
            raise ValueError(f"`group_step_size` must be a finite number >= 0, got {group_step_size}.")
        if not 0.0 <= group_ema_decay < 1.0:
            raise ValueError(f"`group_ema_decay` must be in [0, 1), got {group_ema_decay}.")
        if group_temperature <= 0:
            raise ValueError(f"`group_temperature` must be > 0, got {group_temperature}.")
        if group_adjustment < 0:
            raise ValueError(f"`group_adjustment` must be >= 0, got {group_adjustment}.")
        if group_loss_estimate not in LOSS_ESTIMATES:
            raise ValueError(f"`group_loss_estimate` must be one of {LOSS_ESTIMATES}, got {group_loss_estimate!r}.")
        if not 0.0 <= group_weight_floor < 1.0:
            raise ValueError(f"`group_weight_floor` must be in [0, 1), got {group_weight_floor}.")
        if group_sizes is not None:
            group_sizes = torch.as_tensor(group_sizes, dtype=torch.float64).flatten()
            if group_sizes.numel() != len(self.group_labels) or not (group_sizes > 0).all():
                raise ValueError(
                    f"`group_sizes` must hold one count > 0 per group ({len(self.group_labels)} groups: "
                    f"{self.group_labels.labels}), got {group_sizes.tolist()}."
                )
        self.objective = objective
        self.group_step_size = float(group_step_size)
        self.group_adjustment = float(group_adjustment)
        self.group_ema_decay = float(group_ema_decay)
        self.group_temperature = float(group_temperature)
        self.reduce_across_processes = reduce_across_processes
        self.group_loss_estimate = group_loss_estimate
        self.group_weight_floor = float(group_weight_floor)
        self.group_sizes = group_sizes
        self.num_groups = len(self.group_labels)
        self.log_weights = torch.full((self.num_groups,), -math.log(self.num_groups), dtype=torch.float64)
        self.ema_losses = torch.zeros(self.num_groups, dtype=torch.float64)
        self.ema_initialized = torch.zeros(self.num_groups, dtype=torch.bool)
        self.step = 0
        self._window: dict[str, torch.Tensor] | None = None

    # -- public state ----------------------------------------------------------------------------------------------

    @property
    def groups(self) -> list[str | int]:
        return self.group_labels.labels

    @property
    def weights(self) -> torch.Tensor:
        """The adaptive group weights ``q`` held in the state (``minmax``, ``ema``, ``worst``; uniform otherwise)."""
        return OBJECTIVE_MODE_RULES[self.objective].state_weights(self)

    def encode(self, group_labels, device: torch.device | None = None) -> torch.Tensor:
        """Map group labels (a sequence) or ids (a tensor) to ids; an unknown label raises ``ValueError`` naming it and
        the known labels."""
        return self.group_labels.encode(group_labels, device=device)

    # -- single batch, reference order -----------------------------------------------------------------------------

    def __call__(
        self,
        per_example_losses: torch.Tensor,
        group_ids: torch.Tensor | Sequence[str | int],
        example_weights: torch.Tensor | None = None,
        reference_losses: torch.Tensor | None = None,
    ) -> GroupObjectiveOutput:
        """Update the state with this batch's group losses (excess losses over ``reference_losses`` when given), then
        return the batch loss under the new weights."""
        ids = self._validated_ids(per_example_losses, group_ids, example_weights, reference_losses)
        sums, counts = group_sums(per_example_losses.detach().double(), ids, self.num_groups, _double(example_weights))
        scores = self._score_sums(per_example_losses, ids, example_weights, reference_losses)
        sums, counts, scores = self._reduce(torch.stack([sums, counts, scores])).unbind()
        group_losses = group_means(sums, counts)
        self._update(group_means(scores, counts) if reference_losses is not None else group_losses, counts)
        weights = self._step_weights(counts)
        loss = weighted_group_loss(per_example_losses, ids, weights, counts, example_weights)
        return GroupObjectiveOutput(loss, group_losses.float(), counts.float(), weights.float())

    # -- accumulation window: exact for any split into micro-batches and processes ---------------------------------

    def begin_window(
        self,
        group_ids: Sequence[torch.Tensor | Sequence[str | int]],
        example_weights: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Start an optimizer step whose micro-batches (on this process) have these group ids and example weights.

        Counts each group over the whole window and all processes and fixes the weights used by ``window_loss``
        until ``end_window``. Returns those weights.
        """
        if example_weights is None:
            example_weights = [None] * len(group_ids)
        if len(example_weights) != len(group_ids):
            raise ValueError("`example_weights` must have one entry per micro-batch in `group_ids`.")
        counts = torch.zeros(self.num_groups, dtype=torch.float64)
        for ids, weights in zip(group_ids, example_weights):
            ids = self.encode(ids, device=torch.device("cpu"))
            w = torch.ones(ids.shape, dtype=torch.float64) if weights is None else weights.detach().double().cpu()
            counts += group_sums(w.reshape(ids.shape), ids, self.num_groups)[0]
        counts = self._reduce(counts)
        self._window = {
            "counts": counts,
            "weights": self._step_weights(counts),
            "sums": torch.zeros(self.num_groups, dtype=torch.float64),
            "scores": torch.zeros(self.num_groups, dtype=torch.float64),
            "excess": None,
        }
        return self._window["weights"].float()

    def window_loss(
        self,
        per_example_losses: torch.Tensor,
        group_ids: torch.Tensor | Sequence[str | int],
        example_weights: torch.Tensor | None = None,
        reference_losses: torch.Tensor | None = None,
    ) -> GroupObjectiveOutput:
        """This micro-batch's share of the window's loss; the shares of all micro-batches and processes add up to
        ``sum_g q_g L_g`` over the window. Under DDP (gradients averaged), multiply by the number of processes.

        With ``reference_losses`` (every micro-batch of the window, or none), the update at ``end_window`` scores the
        groups by their excess loss."""
        if self._window is None:
            raise RuntimeError("Call `begin_window` before `window_loss`.")
        ids = self._validated_ids(per_example_losses, group_ids, example_weights, reference_losses)
        excess = reference_losses is not None
        if self._window["excess"] is not None and self._window["excess"] != excess:
            raise ValueError("Pass `reference_losses` to every micro-batch of a window, or to none.")
        self._window["excess"] = excess
        sums, counts = group_sums(per_example_losses.detach().double(), ids, self.num_groups, _double(example_weights))
        self._window["sums"] += sums.cpu()
        self._window["scores"] += self._score_sums(per_example_losses, ids, example_weights, reference_losses).cpu()
        window = self._window
        loss = weighted_group_loss(
            per_example_losses, ids, window["weights"].to(ids.device), window["counts"].to(ids.device), example_weights
        )
        return GroupObjectiveOutput(loss, group_means(sums, counts).float(), counts.float(), window["weights"].float())

    def end_window(self, update: bool = True) -> GroupObjectiveOutput:
        """Finish the optimizer step: all-reduce the window's group sums and update the state once.

        Every process must call it (it is a collective when ``torch.distributed`` is initialised). Returns the
        window's group losses and counts with the weights that were used for it. ``update=False`` leaves the
        weights as they are (when they are driven by held-out losses through ``observe`` instead).
        """
        if self._window is None:
            raise RuntimeError("Call `begin_window` before `end_window`.")
        window, self._window = self._window, None
        sums, scores = self._reduce(torch.stack([window["sums"], window["scores"]])).unbind()
        group_losses = group_means(sums, window["counts"])
        if update:
            self._update(group_means(scores, window["counts"]) if window["excess"] else group_losses, window["counts"])
        loss = (window["weights"] * group_losses).sum()
        return GroupObjectiveOutput(
            loss.float(), group_losses.float(), window["counts"].float(), window["weights"].float()
        )

    def observe(self, group_losses: torch.Tensor, group_counts: torch.Tensor) -> torch.Tensor:
        """Update the state from group losses measured elsewhere (e.g. a validation split's, already reduced over
        processes); groups with count 0 count as absent. Returns the new weights."""
        group_losses = torch.as_tensor(group_losses, dtype=torch.float64).cpu()
        group_counts = torch.as_tensor(group_counts, dtype=torch.float64).cpu()
        if group_losses.shape != (self.num_groups,) or group_counts.shape != (self.num_groups,):
            raise ValueError(
                f"`group_losses` and `group_counts` must have shape ({self.num_groups},), got "
                f"{tuple(group_losses.shape)} and {tuple(group_counts.shape)}."
            )
        self._update(group_losses, group_counts)
        return self.weights.float()

    # -- state ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: tensors plus JSON-serialisable settings and labels."""
        return {
            "log_weights": self.log_weights.clone(),
            "ema_losses": self.ema_losses.clone(),
            "ema_initialized": self.ema_initialized.clone(),
            "step": self.step,
            "groups": list(self.groups),
            "objective": self.objective,
            "group_step_size": self.group_step_size,
            "group_adjustment": self.group_adjustment,
            "group_ema_decay": self.group_ema_decay,
            "group_temperature": self.group_temperature,
            "group_loss_estimate": self.group_loss_estimate,
            "group_weight_floor": self.group_weight_floor,
            "group_sizes": None if self.group_sizes is None else self.group_sizes.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s state (one saved under the old key names too, with a ``FutureWarning``)."""
        state = renamed_state_keys(state, RENAMED_KEYWORDS, "GroupObjective.load_state_dict")
        if list(state["groups"]) != list(self.groups):
            raise ValueError(f"State is for groups {state['groups']}, this objective has {self.groups}.")
        if state["objective"] != self.objective:
            raise ValueError(
                f"State is for objective {state['objective']!r}, this objective has objective {self.objective!r}."
            )
        self.log_weights = state["log_weights"].clone().double()
        self.ema_losses = state["ema_losses"].clone().double()
        self.ema_initialized = state["ema_initialized"].clone().bool()
        self.step = int(state["step"])
        for key in ("group_step_size", "group_adjustment", "group_ema_decay", "group_temperature"):
            setattr(self, key, float(state[key]))
        # States written before these options existed hold none of them: keep this objective's settings.
        self.group_loss_estimate = state.get("group_loss_estimate", self.group_loss_estimate)
        self.group_weight_floor = float(state.get("group_weight_floor", self.group_weight_floor))
        if state.get("group_sizes") is not None:
            self.group_sizes = torch.tensor(state["group_sizes"], dtype=torch.float64)

    def save(self, path: str) -> None:
        """Write the state to a safetensors file (tensors) with the settings in its JSON metadata."""
        from hf_egt.core.serialization import save_tensors_with_metadata

        tensors = {k: v for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}
        metadata = {k: v for k, v in self.state_dict().items() if not isinstance(v, torch.Tensor)}
        save_tensors_with_metadata(tensors, metadata, path)

    @classmethod
    @renamed_keywords(RENAMED_KEYWORDS, "GroupObjective.from_file")
    def from_file(cls, path: str, **overrides) -> GroupObjective:
        """Rebuild an objective from ``save``'s file; ``overrides`` are constructor keywords."""
        from hf_egt.core.serialization import load_tensors_with_metadata

        tensors, metadata = load_tensors_with_metadata(path)
        # a file saved before the rename holds the old key names: read under the new ones (with a warning)
        metadata = renamed_state_keys(metadata, RENAMED_KEYWORDS, f"GroupObjective.from_file({path!r})")
        settings = {name: metadata[name] for name in RENAMED_KEYWORDS.values() if name in metadata}
        if metadata.get("group_sizes") is not None:
            settings["group_sizes"] = metadata["group_sizes"]
        objective = cls(groups=metadata["groups"], **{**settings, **overrides})
        objective.load_state_dict({**tensors, **metadata})
        return objective

    def load(self, path: str) -> None:
        """Restore the state written by ``save`` into this objective."""
        from hf_egt.core.serialization import load_tensors_with_metadata

        tensors, metadata = load_tensors_with_metadata(path)
        self.load_state_dict({**tensors, **metadata})

    # -- internals ------------------------------------------------------------------------------------------------

    def _validated_ids(self, per_example_losses, group_ids, example_weights, reference_losses=None) -> torch.Tensor:
        if per_example_losses.dim() != 1:
            raise ValueError(
                f"`per_example_losses` must be 1-D (one loss per example), got shape {tuple(per_example_losses.shape)}."
            )
        ids = self.encode(group_ids, device=per_example_losses.device)
        if ids.shape != per_example_losses.shape:
            raise ValueError(
                f"`group_ids` has {ids.numel()} entries but `per_example_losses` has {per_example_losses.numel()}."
            )
        if example_weights is not None and example_weights.shape != per_example_losses.shape:
            raise ValueError(
                f"`example_weights` has shape {tuple(example_weights.shape)}, "
                f"expected {tuple(per_example_losses.shape)} (one weight per example)."
            )
        if reference_losses is not None and reference_losses.shape != per_example_losses.shape:
            raise ValueError(
                f"`reference_losses` has shape {tuple(reference_losses.shape)}, "
                f"expected {tuple(per_example_losses.shape)} (one reference loss per example)."
            )
        return ids

    def _score_sums(self, per_example_losses, ids, example_weights, reference_losses) -> torch.Tensor:
        """Per-group weighted sums of the excess losses (zeros without ``reference_losses``)."""
        if reference_losses is None:
            return torch.zeros(self.num_groups, dtype=torch.float64, device=per_example_losses.device)
        excess = excess_losses(per_example_losses.detach().double(), reference_losses.detach().double())
        return group_sums(excess, ids, self.num_groups, _double(example_weights))[0]

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor) if self.reduce_across_processes else tensor

    def _step_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """The weights ``q`` applied to a batch (or window) with these group counts."""
        return OBJECTIVE_MODE_RULES[self.objective].step_weights(self, counts)

    def _update(self, group_losses: torch.Tensor, counts: torch.Tensor) -> None:
        """Fold one batch's (or window's) group losses (or excess-loss scores) into the state."""
        group_losses, counts = group_losses.cpu(), counts.cpu()
        present = counts > 0
        if not torch.isfinite(group_losses[present]).all():
            bad = [self.groups[i] for i in torch.nonzero(present & ~torch.isfinite(group_losses)).flatten().tolist()]
            raise FloatingPointError(f"Non-finite loss at objective step {self.step} for group(s) {bad}.")
        if self.group_sizes is not None:  # the reference: training-set sizes, every group
            adjustment = generalization_adjustment(self.group_sizes, self.group_adjustment)
        else:
            adjustment = generalization_adjustment(counts, self.group_adjustment)
        OBJECTIVE_MODE_RULES[self.objective].update(self, group_losses, present, adjustment)
        self.step += 1


# The old attribute names read and write the new ones, with the one deprecation warning, until REMOVAL_VERSION.
for _old, _new in RENAMED_KEYWORDS.items():
    setattr(GroupObjective, _old, renamed_attribute(_old, _new, "GroupObjective"))
del _old, _new


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().double()
