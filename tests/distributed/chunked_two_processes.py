"""Two processes, 4 rows each per step, chunked per-token losses through DDP, gradient checkpointing on: the 2-process
side of `test_two_processes_chunked_with_checkpointing_equal_one_process_full_logits`.

Rank 0 writes the trained LoRA parameters (safetensors) and the objective's weights with whether the chunked path was
used (JSON) to the folder in argv[1].
"""

import json
import os
import sys

from safetensors.torch import save_file

from tests.core.test_losses import train
from tests.distributed.ending import finish

output_dir = sys.argv[1]
trainer = train(
    output_dir,
    per_device_train_batch_size=4,
    gradient_checkpointing=True,
    gradient_checkpointing_kwargs={"use_reentrant": False},
)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel", type(trainer.model_wrapped)
if trainer.accelerator.is_main_process:
    os.makedirs(output_dir, exist_ok=True)
    params = {name: p.detach().contiguous() for name, p in trainer.model.named_parameters() if p.requires_grad}
    save_file(params, f"{output_dir}/params.safetensors")
    with open(f"{output_dir}/result.json", "w") as handle:
        json.dump(
            {"weights": trainer.group_objective.weights.tolist(), "chunked": trainer._chunked_token_losses}, handle
        )
finish(trainer.accelerator)
