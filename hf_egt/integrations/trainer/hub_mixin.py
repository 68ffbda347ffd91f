"""The model-card and Hub policy of the EGT trainers (`EGTHubMixin`): the card is the EGT card
(`hf_egt.integrations.hub.build_model_card`), the one push is `push_to_hub()` with the upload allow-list, and
checkpoints are never pushed on their own.

Kept apart from the group objective's training logic (`egt_trainer.EGTTrainerMixin`): the trainers inherit both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

logger = logging.getLogger(__name__)


class EGTHubMixin:
    """`Trainer`'s card and Hub methods for [`hf_egt.EGTTrainer`] and [`hf_egt.EGTSFTTrainer`].

    Needs a `transformers.Trainer` after it in the method order, and `last_eval_run()` / `_last_eval_group_sums`
    (`EGTTrainerMixin`) for the default card.
    """

    def _base_model_id(self) -> str:
        """The Hub id or path of the model the adapter applies to (peft's record, else the model config's)."""
        model = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(model, "peft_config", None)
        if isinstance(peft_config, dict) and peft_config:
            recorded = next(iter(peft_config.values())).base_model_name_or_path
            if recorded:
                return recorded
        get_base_model = getattr(model, "get_base_model", None)
        base = get_base_model() if callable(get_base_model) else model
        return getattr(getattr(base, "config", None), "_name_or_path", None) or type(base).__name__

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | Sequence[str] | None = None,
        *,
        runs: dict[str, dict] | None = None,
        **card_kwargs,
    ) -> None:
        """Write the EGT model card (`hf_egt.integrations.hub.build_model_card`: the per-group table, the settings,
        what was held out) to `output_dir/README.md`, instead of `Trainer`'s default card.

        Args:
            model_name: the card's title (default: `hub_model_id`, else the output folder's name).
            dataset_name: the training dataset (Hub id or description).
            tags: extra tags.
            runs: run name -> per-group summary, one column each (e.g. `{"base": ..., "minmax": ...}`); default: the
                last evaluation, under the objective's name (without one, no card is written: a warning says so).
            **card_kwargs: the other arguments of `build_model_card` (`settings`, `held_out`, `eval_counts`,
                `command`, `usage`, `base_model`...).
        """
        if not self.is_world_process_zero():
            return
        from hf_egt.integrations.hub import build_model_card

        if runs is None:
            if self._last_eval_group_sums is None:  # e.g. TRL writes the card at every checkpoint
                logger.warning("No evaluation yet: no EGT card written (call `evaluate()` first, or pass `runs=`).")
                return
            runs = {self.args.objective: self.last_eval_run()}
        card_kwargs.setdefault("base_model", self._base_model_id())
        card_kwargs.setdefault("group_column", self.args.group_column)
        card = build_model_card(
            runs=runs,
            objective=self.args.objective,
            model_name=model_name
            or self.hub_model_id
            or self.args.hub_model_id
            or os.path.basename(os.path.abspath(self.args.output_dir)),
            dataset=dataset_name,
            tags=[tags] if isinstance(tags, str) else list(tags or ()),
            **card_kwargs,
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        save_model_first: bool = True,
        **kwargs,
    ):
        """Save the adapter, write the EGT card (`create_model_card(**kwargs)`) and upload `output_dir` in one commit
        through `hf_egt.integrations.hub.push_folder_to_hub`: only the allow-listed files (`hub.UPLOAD_PATTERNS`: the
        card, reports, split record, adapter, tokenizer; never checkpoints, optimizer states or training arguments),
        and none that holds the token. Returns the `huggingface_hub.CommitInfo` (on the main process; `None`
        elsewhere). The upload is always blocking: `blocking` is accepted for `Trainer` compatibility.
        `save_model_first=False` uploads what `output_dir` already holds (e.g. an adapter exported after `save_model`).
        """
        from hf_egt.integrations.hub import push_folder_to_hub, resolve_hub_token

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        repo_id = self.hub_model_id or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        if save_model_first:
            self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(model_name=kwargs.pop("model_name", repo_id), **kwargs)
        private = private if private is not None else self.args.hub_private_repo
        return push_folder_to_hub(
            self.args.output_dir,
            repo_id,
            token=resolve_hub_token(token),
            private=bool(private),
            commit_message=commit_message or "Upload hf-egt adapter, model card and EGT report",
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """`Trainer.init_hf_repo` (create the repo before training, so that a bad token or repo id fails early),
        through the same `huggingface_hub.HfApi` client as `push_to_hub` (`Trainer` reuses one shared client)."""
        if not self.is_world_process_zero():
            return
        from huggingface_hub import HfApi

        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        token = token if token is not None else self.args.hub_token
        private = private if private is not None else self.args.hub_private_repo
        self.hub_model_id = HfApi(token=token).create_repo(repo_id, private=bool(private), exist_ok=True).repo_id
        self.push_in_progress = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """`Trainer` uploads each checkpoint folder (optimizer states, pickled training arguments) without an
        allow-list; here nothing is uploaded until `push_to_hub`, which sends the allow-listed files only."""
        if not getattr(self, "_checkpoint_push_noted", False):
            logger.info("EGTTrainer pushes once, at `push_to_hub()`, with the EGT card: checkpoints stay local.")
            self._checkpoint_push_noted = True
