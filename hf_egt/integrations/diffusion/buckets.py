"""The group objective kept per noise-level bucket: the worst group *at each noise level*.

A diffusion model's loss scale depends mostly on the timestep, not on the group: with a single set of group weights,
a group that happens to draw more high-noise timesteps looks worse. EGT's diffusion experiments therefore take the
worst group at each noise level. :class:`NoiseLevelGroupObjective` holds one
:class:`~hf_egt.core.objective.GroupObjective` per bucket of timesteps (with its own weights ``q_k``, EMA, ...) and
combines them as

    loss = sum_k (n_k / n) * sum_g q_{k,g} L_{k,g}

where ``n_k`` is the number of examples of the window that fell in bucket ``k``. With ``objective="erm"`` this is
exactly the mean per-example loss, and with one bucket it is the plain group objective. All group-DRO math stays in
``GroupObjective``; this class only routes examples to buckets, and is exact over accumulation windows and processes
for the same reason ``GroupObjective``'s windows are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hf_egt.core.objective import GroupObjective, all_reduce_sum
from hf_egt.core.vocabulary import renamed_attribute


class NoiseLevelGroupObjective:
    """``num_buckets`` group objectives, one per noise-level bucket, driven over accumulation windows.

    Args:
        num_buckets: number of noise-level buckets (1 gives the plain group objective).
        **objective_kwargs: arguments of :class:`~hf_egt.core.objective.GroupObjective` (``groups``, ``objective``,
            ``group_step_size``, ``group_ema_decay``, ...), the same for every bucket.
    """

    def __init__(self, num_buckets: int = 1, **objective_kwargs):
        if num_buckets < 1:
            raise ValueError(f"`num_buckets` must be >= 1, got {num_buckets}.")
        self.objectives = [GroupObjective(**objective_kwargs) for _ in range(num_buckets)]
        self._bucket_shares: torch.Tensor | None = None

    @property
    def num_buckets(self) -> int:
        return len(self.objectives)

    @property
    def groups(self) -> list:
        return self.objectives[0].groups

    @property
    def objective(self) -> str:
        """The group objective's name (``OBJECTIVE_MODES``), the same for every bucket."""
        return self.objectives[0].objective

    mode = renamed_attribute("mode", "objective", "NoiseLevelGroupObjective")

    @property
    def step(self) -> int:
        return self.objectives[0].step

    @property
    def weights(self) -> torch.Tensor:
        """Group weights of each bucket, shape ``(num_buckets, num_groups)``."""
        return torch.stack([objective.weights for objective in self.objectives])

    def encode(self, group_labels, device: torch.device | None = None) -> torch.Tensor:
        return self.objectives[0].encode(group_labels, device=device)

    def begin_window(self, group_ids: Sequence[torch.Tensor], bucket_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Start an optimizer step whose micro-batches (on this process) have these group and bucket ids.

        Returns the weights used for the window, shape ``(num_buckets, num_groups)``.
        """
        if len(group_ids) != len(bucket_ids):
            raise ValueError("`group_ids` and `bucket_ids` must have one entry per micro-batch.")
        group_ids = [self.encode(ids, device=torch.device("cpu")) for ids in group_ids]
        bucket_ids = [self._checked_buckets(buckets, ids).cpu() for buckets, ids in zip(bucket_ids, group_ids)]
        counts = sum(torch.bincount(buckets, minlength=self.num_buckets).double() for buckets in bucket_ids)
        if self.objectives[0].reduce_across_processes:
            counts = all_reduce_sum(counts)
        self._bucket_shares = counts / counts.sum().clamp_min(1)
        weights = []
        for k, objective in enumerate(self.objectives):
            weights.append(objective.begin_window([ids[buckets == k] for ids, buckets in zip(group_ids, bucket_ids)]))
        return torch.stack(weights)

    def window_loss(
        self, per_example_losses: torch.Tensor, group_ids: torch.Tensor, bucket_ids: torch.Tensor
    ) -> torch.Tensor:
        """This micro-batch's share of the window loss (the shares of all micro-batches and processes add up to it)."""
        if self._bucket_shares is None:
            raise RuntimeError("Call `begin_window` before `window_loss`.")
        bucket_ids = self._checked_buckets(bucket_ids, group_ids)
        loss = per_example_losses.new_zeros(())
        for k, objective in enumerate(self.objectives):
            mask = bucket_ids == k
            share = objective.window_loss(per_example_losses[mask], group_ids[mask]).loss
            loss = loss + self._bucket_shares[k].item() * share
        return loss

    def end_window(self) -> dict[str, torch.Tensor]:
        """Finish the optimizer step (collective: every process calls it). Returns the window's per-bucket
        ``group_losses``, ``group_counts`` and the ``weights`` used, each of shape ``(num_buckets, num_groups)``."""
        if self._bucket_shares is None:
            raise RuntimeError("Call `begin_window` before `end_window`.")
        self._bucket_shares = None
        outputs = [objective.end_window() for objective in self.objectives]
        return {
            "group_losses": torch.stack([out.group_losses for out in outputs]),
            "group_counts": torch.stack([out.group_counts for out in outputs]),
            "weights": torch.stack([out.weights for out in outputs]),
        }

    def state_dict(self) -> dict:
        return {"num_buckets": self.num_buckets, "buckets": [objective.state_dict() for objective in self.objectives]}

    def load_state_dict(self, state: dict) -> None:
        if state["num_buckets"] != self.num_buckets:
            raise ValueError(f"State has {state['num_buckets']} noise buckets, this objective has {self.num_buckets}.")
        for objective, bucket_state in zip(self.objectives, state["buckets"]):
            objective.load_state_dict(bucket_state)

    def save(self, path: str) -> None:
        """Write every bucket's state to one safetensors file (tensors ``bucket_<k>.<name>``, settings as JSON)."""
        from hf_egt.core.serialization import save_tensors_with_metadata

        tensors, metadata = {}, {"num_buckets": self.num_buckets, "buckets": []}
        for k, state in enumerate(self.state_dict()["buckets"]):
            tensors.update({f"bucket_{k}.{name}": v for name, v in state.items() if isinstance(v, torch.Tensor)})
            metadata["buckets"].append({name: v for name, v in state.items() if not isinstance(v, torch.Tensor)})
        save_tensors_with_metadata(tensors, metadata, path)

    def load(self, path: str) -> None:
        """Restore the state written by :meth:`save`."""
        from hf_egt.core.serialization import load_tensors_with_metadata

        tensors, metadata = load_tensors_with_metadata(path)
        buckets = []
        for k, settings in enumerate(metadata["buckets"]):
            prefix = f"bucket_{k}."
            buckets.append({**settings, **{n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}})
        self.load_state_dict({"num_buckets": metadata["num_buckets"], "buckets": buckets})

    def _checked_buckets(self, bucket_ids: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        bucket_ids = bucket_ids.long()
        if bucket_ids.shape != group_ids.shape:
            raise ValueError(f"`bucket_ids` has shape {tuple(bucket_ids.shape)}, expected {tuple(group_ids.shape)}.")
        if bucket_ids.numel() and (bucket_ids.min() < 0 or bucket_ids.max() >= self.num_buckets):
            raise ValueError(f"Bucket ids must be in 0..{self.num_buckets - 1}, got {bucket_ids.unique().tolist()}.")
        return bucket_ids
