"""Two processes: evaluate the base model on 17 rows (the sampler repeats one to even out the shards), train, evaluate
again: the 2-process side of `test_two_processes_count_each_eval_row_once_and_train_alike`.

argv: output folder, "base" or "no_base" (evaluate before training or not). Rank 0 writes `result.json` (each
evaluation's per-group sums, token and row counts, and its run summary) and `params.safetensors`.
"""

import json
import os
import sys

from safetensors.torch import save_file

from tests.distributed.ending import finish
from tests.integrations.trainer.test_egt_trainer import lora_params
from tests.integrations.trainer.test_egt_trainer_evaluation import evaluation_trainer

output_dir, mode = sys.argv[1], sys.argv[2]
trainer = evaluation_trainer(output_dir, per_device_train_batch_size=4)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
result = {}
if mode == "base":
    result["base"] = trainer.evaluate_groups()
    result["base_sums"] = [tensor.tolist() for tensor in trainer._last_eval_group_sums]
trainer.train()
result["trained"] = trainer.evaluate_groups()
result["trained_sums"] = [tensor.tolist() for tensor in trainer._last_eval_group_sums]
if trainer.accelerator.is_main_process:
    os.makedirs(output_dir, exist_ok=True)
    save_file({name: t.contiguous() for name, t in lora_params(trainer).items()}, f"{output_dir}/params.safetensors")
    with open(f"{output_dir}/result.json", "w") as handle:
        json.dump(result, handle)
finish(trainer.accelerator)
