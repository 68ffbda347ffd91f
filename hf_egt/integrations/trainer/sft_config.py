"""`EGTSFTConfig`: TRL's `SFTConfig` with the group objective's and the chunked per-token losses' options."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from hf_egt.integrations.trainer.config import GroupArguments, TokenLossArguments


def bf16_available(use_cpu: bool) -> bool:
    """Whether bf16 mixed precision can run here: a GPU that supports it, and not `use_cpu`."""
    if use_cpu:
        return False
    from transformers.utils import is_torch_bf16_gpu_available

    return is_torch_bf16_gpu_available()


@dataclass
class EGTSFTConfig(GroupArguments, TokenLossArguments, SFTConfig):
    """[`~trl.SFTConfig`] for [`EGTSFTTrainer`], with the group objective's options.

    See [`hf_egt.integrations.trainer.GroupArguments`] for `group_column`, `groups`, `objective`, `group_step_size`,
    `group_adjustment`, `group_ema_decay` and `group_temperature`, [`hf_egt.integrations.trainer.TokenLossArguments`]
    for `chunked_token_losses` and `token_loss_chunk_size`. `packing` and `padding_free` are not supported
    (a packed row mixes groups).

    Two defaults differ from TRL's:

    - `assistant_only_loss` (`bool` or `None`, defaults to `None`): on conversational `messages` data, `None` and
      `True` train on the assistant turns only (their content and the end-of-turn tokens the chat template adds),
      with the masks taken from the template's own renderings of each conversation prefix, so templates without
      `{% generation %}` markers work; `False` trains on every token. On prompt-completion data the loss is TRL's
      completion-only loss (`completion_only_loss`); on plain text, every token (`True` is then an error).
    - `bf16` (`bool` or `None`, defaults to `None`): `True` where a GPU supports it (TRL's default), `False` on a CPU
      or with `use_cpu`, so that `EGTSFTConfig(output_dir=...)` works everywhere.
    """

    assistant_only_loss: bool | None = field(
        default=None,
        metadata={
            "help": "Loss on the assistant turns only, for conversational `messages` data (default None: yes; masks "
            "from the chat template's renderings of each conversation prefix); False: every token."
        },
    )

    def __post_init__(self):
        if self.packing or self.padding_free:
            raise ValueError(
                "`packing` and `padding_free` put several examples (and groups) in one row, which the per-group "
                "loss cannot split: set `packing=False` and `padding_free=False`."
            )
        if self.bf16 is None:  # TRL's default is bf16 unless fp16, which a CPU-only machine refuses
            self.bf16 = not self.fp16 and bf16_available(self.use_cpu)
        super().__post_init__()
