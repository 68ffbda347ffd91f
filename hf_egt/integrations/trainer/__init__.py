"""The transformers / TRL integration: `EGTConfig` + `EGTTrainer`, and `EGTSFTConfig` + `EGTSFTTrainer` (TRL).

`config` holds the documented options, `egt_trainer` the trainer and its group-objective logic (`EGTTrainerMixin`),
`hub_mixin` the model-card and Hub policy (`EGTHubMixin`), `callbacks` the eval-driven weight update, `data_utils` the
collators and dataset helpers, `modeling` the adapter wrapping, `checkpoints` the resume checks; the TRL pair
(`sft_config`, `sft_trainer`) is imported on first use, so that TRL stays optional.
"""

from hf_egt.core.vocabulary import OBJECTIVE_STATE_NAME
from hf_egt.integrations.trainer.callbacks import GroupWeightsFromEvalCallback
from hf_egt.integrations.trainer.checkpoints import RunRecordCallback, check_checkpoint, last_checkpoint
from hf_egt.integrations.trainer.config import (
    GROUP_REFERENCES,
    EGTConfig,
    GroupArguments,
    TokenLossArguments,
)
from hf_egt.integrations.trainer.data_utils import (
    DataCollatorForCausalLM,
    GroupCollator,
    dataset_group_labels,
    resolve_groups,
    tokenize_text_dataset,
)
from hf_egt.integrations.trainer.egt_trainer import (
    EGTTrainer,
    EGTTrainerMixin,
    group_eval_metrics,
)
from hf_egt.integrations.trainer.hub_mixin import EGTHubMixin
from hf_egt.integrations.trainer.modeling import wrap_model

__all__ = [
    "GROUP_REFERENCES",
    "OBJECTIVE_STATE_NAME",
    "RunRecordCallback",
    "DataCollatorForCausalLM",
    "EGTConfig",
    "EGTHubMixin",
    "EGTTrainer",
    "EGTTrainerMixin",
    "GroupArguments",
    "GroupCollator",
    "GroupWeightsFromEvalCallback",
    "TokenLossArguments",
    "check_checkpoint",
    "dataset_group_labels",
    "group_eval_metrics",
    "last_checkpoint",
    "resolve_groups",
    "tokenize_text_dataset",
    "wrap_model",
]
