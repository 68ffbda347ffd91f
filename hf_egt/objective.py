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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

OBJECTIVE_MODES = ("erm", "reweight", "minmax", "worst", "ema")


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: tensor in, tensor out.
# ---------------------------------------------------------------------------------------------------------------------


def group_sums(
    values: torch.Tensor, group_ids: torch.Tensor, num_groups: int, example_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group weighted sums of ``values`` and per-group total weights (counts when unweighted).

    Returns two float tensors of shape ``(num_groups,)``; a group absent from the batch gets 0 in both.
    """
    weights = torch.ones_like(values) if example_weights is None else example_weights.to(values.dtype)
    sums = values.new_zeros(num_groups).index_add(0, group_ids, values * weights)
    counts = values.new_zeros(num_groups).index_add(0, group_ids, weights)
    return sums, counts


def group_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-group means ``sums / counts``, with 0 for groups of zero count."""
    return torch.where(counts > 0, sums / counts.clamp_min(torch.finfo(sums.dtype).tiny), torch.zeros_like(sums))


def exponentiated_gradient_step(
    log_weights: torch.Tensor, group_losses: torch.Tensor, present: torch.Tensor, step_size: float
) -> torch.Tensor:
    """One group-DRO update in log space: ``log softmax(log q + step_size * L * present)``.

    Working in log space keeps the weights finite and normalised for any loss scale (no ``exp`` of a large number).
    """
    return torch.log_softmax(log_weights + step_size * group_losses * present.to(group_losses.dtype), dim=0)


def generalization_adjustment(counts: torch.Tensor, adjustment: float) -> torch.Tensor:
    """The ``C / sqrt(n_g)`` term of Sagawa et al. (0 for absent groups)."""
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
        mode: one of ``erm``, ``reweight``, ``minmax``, ``worst``, ``ema``.
        step_size: exponentiated-gradient step size ``eta`` (``minmax``).
        groups: the group labels (``str`` or ``int``), in id order. Defaults to ``0 .. num_groups - 1``.
        adjustment: generalisation adjustment ``C``: ``C / sqrt(n_g)`` is added to ``L_g`` in the update.
        ema_decay: decay of the moving average of group losses (``ema``).
        temperature: softmax temperature on the moving average (``ema``).
        reduce_across_processes: all-reduce group statistics when ``torch.distributed`` is initialised.

    Example:
        >>> objective = GroupObjective(groups=["a", "b"], mode="minmax", step_size=0.1)
        >>> out = objective(torch.tensor([1.0, 2.0, 3.0]), ["a", "b", "b"])
        >>> out.loss.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        num_groups: int | None = None,
        mode: str = "minmax",
        step_size: float = 0.01,
        groups: Sequence[str | int] | None = None,
        adjustment: float = 0.0,
        ema_decay: float = 0.9,
        temperature: float = 1.0,
        reduce_across_processes: bool = True,
    ):
        if mode not in OBJECTIVE_MODES:
            raise ValueError(f"`mode` must be one of {OBJECTIVE_MODES}, got {mode!r}.")
        if groups is None and num_groups is None:
            raise ValueError("Pass `num_groups` or `groups`.")
        if groups is None:
            groups = list(range(num_groups))
        self.group_labels = GroupLabels(groups)
        if num_groups is not None and num_groups != len(self.group_labels):
            raise ValueError(f"`num_groups`={num_groups} but `groups` names {len(self.group_labels)} groups.")
        if step_size < 0 or not math.isfinite(step_size):
            raise ValueError(f"`step_size` must be a finite number >= 0, got {step_size}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay}.")
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        if adjustment < 0:
            raise ValueError(f"`adjustment` must be >= 0, got {adjustment}.")
        self.mode = mode
        self.step_size = float(step_size)
        self.adjustment = float(adjustment)
        self.ema_decay = float(ema_decay)
        self.temperature = float(temperature)
        self.reduce_across_processes = reduce_across_processes
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
        if self.mode == "minmax":
            return self.log_weights.exp()
        if self.mode == "ema":
            return self._ema_weights()
        if self.mode == "worst":
            return self._worst_weights(torch.ones(self.num_groups, dtype=torch.bool))
        return torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.float64)

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
    ) -> GroupObjectiveOutput:
        """Update the state with this batch's group losses, then return the batch loss under the new weights."""
        ids = self._validated_ids(per_example_losses, group_ids, example_weights)
        sums, counts = group_sums(per_example_losses.detach().double(), ids, self.num_groups, _double(example_weights))
        sums, counts = self._reduce(sums), self._reduce(counts)
        group_losses = group_means(sums, counts)
        self._update(group_losses, counts)
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
        }
        return self._window["weights"].float()

    def window_loss(
        self,
        per_example_losses: torch.Tensor,
        group_ids: torch.Tensor | Sequence[str | int],
        example_weights: torch.Tensor | None = None,
    ) -> GroupObjectiveOutput:
        """This micro-batch's share of the window's loss; the shares of all micro-batches and processes add up to
        ``sum_g q_g L_g`` over the window. Under DDP (gradients averaged), multiply by the number of processes."""
        if self._window is None:
            raise RuntimeError("Call `begin_window` before `window_loss`.")
        ids = self._validated_ids(per_example_losses, group_ids, example_weights)
        sums, counts = group_sums(per_example_losses.detach().double(), ids, self.num_groups, _double(example_weights))
        self._window["sums"] += sums.cpu()
        window = self._window
        loss = weighted_group_loss(
            per_example_losses, ids, window["weights"].to(ids.device), window["counts"].to(ids.device), example_weights
        )
        return GroupObjectiveOutput(loss, group_means(sums, counts).float(), counts.float(), window["weights"].float())

    def end_window(self) -> GroupObjectiveOutput:
        """Finish the optimizer step: all-reduce the window's group sums and update the state once.

        Every process must call it (it is a collective when ``torch.distributed`` is initialised). Returns the
        window's group losses and counts with the weights that were used for it.
        """
        if self._window is None:
            raise RuntimeError("Call `begin_window` before `end_window`.")
        window, self._window = self._window, None
        sums = self._reduce(window["sums"])
        group_losses = group_means(sums, window["counts"])
        self._update(group_losses, window["counts"])
        loss = (window["weights"] * group_losses).sum()
        return GroupObjectiveOutput(
            loss.float(), group_losses.float(), window["counts"].float(), window["weights"].float()
        )

    # -- state ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: tensors plus JSON-serialisable settings and labels."""
        return {
            "log_weights": self.log_weights.clone(),
            "ema_losses": self.ema_losses.clone(),
            "ema_initialized": self.ema_initialized.clone(),
            "step": self.step,
            "groups": list(self.groups),
            "mode": self.mode,
            "step_size": self.step_size,
            "adjustment": self.adjustment,
            "ema_decay": self.ema_decay,
            "temperature": self.temperature,
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["groups"]) != list(self.groups):
            raise ValueError(f"State is for groups {state['groups']}, this objective has {self.groups}.")
        if state["mode"] != self.mode:
            raise ValueError(f"State is for mode {state['mode']!r}, this objective has mode {self.mode!r}.")
        self.log_weights = state["log_weights"].clone().double()
        self.ema_losses = state["ema_losses"].clone().double()
        self.ema_initialized = state["ema_initialized"].clone().bool()
        self.step = int(state["step"])
        for key in ("step_size", "adjustment", "ema_decay", "temperature"):
            setattr(self, key, float(state[key]))

    def save(self, path: str) -> None:
        """Write the state to a safetensors file (tensors) with the settings in its JSON metadata."""
        from .serialization import save_tensors_with_metadata

        tensors = {k: v for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}
        metadata = {k: v for k, v in self.state_dict().items() if not isinstance(v, torch.Tensor)}
        save_tensors_with_metadata(tensors, metadata, path)

    @classmethod
    def from_file(cls, path: str, **overrides) -> GroupObjective:
        """Rebuild an objective from ``save``'s file."""
        from .serialization import load_tensors_with_metadata

        tensors, metadata = load_tensors_with_metadata(path)
        settings = {k: metadata[k] for k in ("mode", "step_size", "adjustment", "ema_decay", "temperature")}
        objective = cls(groups=metadata["groups"], **{**settings, **overrides})
        objective.load_state_dict({**tensors, **metadata})
        return objective

    def load(self, path: str) -> None:
        """Restore the state written by ``save`` into this objective."""
        from .serialization import load_tensors_with_metadata

        tensors, metadata = load_tensors_with_metadata(path)
        self.load_state_dict({**tensors, **metadata})

    # -- internals ------------------------------------------------------------------------------------------------

    def _validated_ids(self, per_example_losses, group_ids, example_weights) -> torch.Tensor:
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
        return ids

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor) if self.reduce_across_processes else tensor

    def _ema_weights(self) -> torch.Tensor:
        return torch.softmax(self.ema_losses / self.temperature, dim=0)

    def _step_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """The weights ``q`` applied to a batch (or window) with these group counts."""
        present = counts > 0
        if self.mode == "erm":
            return counts / counts.sum().clamp_min(torch.finfo(counts.dtype).tiny)
        if self.mode == "reweight":
            return present.double() / present.sum().clamp_min(1)
        if self.mode == "worst":
            return self._worst_weights(present.cpu()).to(counts.device)
        return self.weights.to(counts.device)

    def _worst_weights(self, present: torch.Tensor) -> torch.Tensor:
        """One-hot on the present group with the largest last-seen loss (never-seen groups rank first)."""
        if not present.any():
            return torch.zeros(self.num_groups, dtype=torch.float64)
        scores = torch.where(self.ema_initialized, self.ema_losses, torch.full_like(self.ema_losses, math.inf))
        scores = torch.where(present, scores, torch.full_like(scores, -math.inf))
        return torch.nn.functional.one_hot(scores.argmax(), self.num_groups).to(torch.float64)

    def _update(self, group_losses: torch.Tensor, counts: torch.Tensor) -> None:
        """Fold one batch's (or window's) group losses into the state."""
        present = counts > 0
        adjusted = group_losses + generalization_adjustment(counts, self.adjustment)
        if not torch.isfinite(adjusted[present]).all():
            bad = [self.groups[i] for i in torch.nonzero(present & ~torch.isfinite(adjusted)).flatten().tolist()]
            raise FloatingPointError(f"Non-finite loss at objective step {self.step} for group(s) {bad}.")
        if self.mode == "minmax":
            self.log_weights = exponentiated_gradient_step(
                self.log_weights, adjusted.cpu(), present.cpu(), self.step_size
            )
        elif self.mode in ("ema", "worst"):  # `worst` keeps the last seen loss: an EMA with decay 0
            decay = self.ema_decay if self.mode == "ema" else 0.0
            adjusted, present = adjusted.cpu(), present.cpu()
            first = present & ~self.ema_initialized
            blended = decay * self.ema_losses + (1 - decay) * adjusted
            self.ema_losses = torch.where(first, adjusted, torch.where(present, blended, self.ema_losses))
            self.ema_initialized = self.ema_initialized | present
        self.step += 1


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().double()
