"""Two processes, 4 rows each per step: the 2-process side of `test_two_processes_match_one_process`.

Rank 0 writes the trained LoRA parameters (safetensors) and the objective's weights (JSON) to the folder in argv[1].
"""

import json
import os
import sys

from safetensors.torch import save_file

from hf_egt import EGTTrainer
from tests.distributed.ending import finish
from tests.integrations.trainer.test_egt_trainer import config, lora, lora_params
from tests.trainer_utils import group_dataset, tiny_llama

output_dir = sys.argv[1]
trainer = EGTTrainer(
    model=tiny_llama(),
    args=config(output_dir, per_device_train_batch_size=4),
    train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
    peft_config=lora(),
)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
trainer.train()
if trainer.accelerator.is_main_process:
    os.makedirs(output_dir, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in lora_params(trainer).items()}, f"{output_dir}/params.safetensors"
    )
    with open(f"{output_dir}/weights.json", "w") as handle:
        json.dump(trainer.group_objective.weights.tolist(), handle)
finish(trainer.accelerator)
