"""Callbacks of the EGT trainers: `GroupWeightsFromEvalCallback` updates the group weights from a validation split."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class GroupWeightsFromEvalCallback(TrainerCallback):
    """Every `group_update_steps` optimizer steps, update the group weights from the group losses of the validation
    split `group_update_dataset` (held-out-driven weights: a small group fitted fast on training data keeps its
    weight while its held-out loss stays high). The update is in the objective's state, saved with checkpoints.

    On a step where the scheduled evaluation passes over that split too (it runs after `on_step_end`, on the same
    model), the update waits for it and uses its group sums (`on_evaluate`): one pass instead of two, the same weights.
    They then show in the next training log (the step's own log is written before the evaluation).
    """

    def __init__(self, trainer):
        """`trainer`: the `EGTTrainer` or `EGTSFTTrainer` (an `EGTTrainerMixin`) whose weights it updates."""
        self.trainer = trainer
        self._waiting_step: int | None = None  # a step whose update waits for the scheduled evaluation

    def on_step_begin(self, args, state, control, **kwargs):
        self._update_if_still_waiting()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.group_update_steps == 0:
            if control.should_evaluate:
                self._waiting_step = state.global_step
            else:
                self.trainer.update_weights_from_eval()
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        groups = self.trainer.group_objective.groups
        of_update_split = f"{self.trainer.group_update_prefix}_group_loss/{groups[0]}" in (metrics or {})
        if self._waiting_step == state.global_step and of_update_split:
            self._waiting_step = None
            self.trainer.update_weights_from_last_eval()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._update_if_still_waiting()
        return control

    def _update_if_still_waiting(self) -> None:
        """The scheduled evaluation did not come (another callback cancelled it): run the update's own pass."""
        if self._waiting_step is not None:
            logger.warning(
                "The evaluation scheduled at step %d did not run; group weights updated from their own pass over %r.",
                self._waiting_step,
                self.trainer.args.group_update_dataset,
            )
            self._waiting_step = None
            self.trainer.update_weights_from_eval()
