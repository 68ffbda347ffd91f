"""Two processes, batches of 4 from one group sampler over GROUP_IDS (seed 5, 8 rows per step): the 2-process side
of `test_two_processes_draw_their_own_parts_of_one_stream`. Writes each rank's batches of indices (2 epochs) to
argv[2] as JSON."""

import json
import sys

import torch
from accelerate import Accelerator

from hf_egt.core.samplers import group_sampler
from tests.core.test_samplers import GROUP_IDS
from tests.distributed.ending import finish

sampling, output = sys.argv[1], sys.argv[2]
accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.num_processes
dataset = torch.arange(len(GROUP_IDS))
sampler = group_sampler(sampling, GROUP_IDS, 3, seed=5, step_size=4 * accelerator.num_processes, batch_size=4)
loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler))
batches = []
for epoch in range(2):
    loader.set_epoch(epoch)
    batches += [batch.tolist() for batch in loader]
gathered = [None, None]
torch.distributed.all_gather_object(gathered, batches)
if accelerator.is_main_process:
    with open(output, "w") as handle:
        json.dump({"0": gathered[0], "1": gathered[1]}, handle)
finish(accelerator)
