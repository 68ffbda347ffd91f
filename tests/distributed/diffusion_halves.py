"""Two processes, half of every micro-batch each: the 2-process side of `test_diffusion_window_two_processes_match_one`.

Rank 0 writes each window's LoRA gradients (safetensors) and the objective's weights after each window (JSON) to the
folder in argv[1].
"""

import json
import sys

from accelerate import Accelerator
from safetensors.torch import save_file

from tests.distributed.ending import finish
from tests.integrations.diffusion.test_train import diffusion_window_case, window_gradients

accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.num_processes
components, model, objective, windows = diffusion_window_case()
gradients, weights = window_gradients(accelerator, (components, accelerator.prepare(model), objective, windows))
if accelerator.is_main_process:
    for index, named in enumerate(gradients):
        save_file({name: g.contiguous() for name, g in named.items()}, f"{sys.argv[1]}/gradients_{index}.safetensors")
    with open(f"{sys.argv[1]}/weights.json", "w") as handle:
        json.dump(weights, handle)
finish(accelerator)
