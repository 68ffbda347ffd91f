"""`EGTSFTConfig`: TRL's `SFTConfig` with the group objective's and the chunked per-token losses' options."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from hf_egt.integrations.trainer.config import GroupArguments, TokenLossArguments


@dataclass
class EGTSFTConfig(GroupArguments, TokenLossArguments, SFTConfig):
    """[`~trl.SFTConfig`] for [`EGTSFTTrainer`], with the group objective's options.

    See [`hf_egt.integrations.trainer.GroupArguments`] for `group_column`, `groups`, `objective`, `group_step_size`,
    `group_adjustment`, `group_ema_decay` and `group_temperature`, [`hf_egt.integrations.trainer.TokenLossArguments`]
    for `chunked_token_losses` and `token_loss_chunk_size`. `packing` and `padding_free` are not supported
    (a packed row mixes groups).
    """

    def __post_init__(self):
        if self.packing or self.padding_free:
            raise ValueError(
                "`packing` and `padding_free` put several examples (and groups) in one row, which the per-group "
                "loss cannot split: set `packing=False` and `padding_free=False`."
            )
        super().__post_init__()
