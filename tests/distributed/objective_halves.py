"""Each rank gets its half of every batch; rank 0 writes the objective's trajectory as JSON.

Runs the single-batch (reference-order) path and the accumulation-window path (2 micro-batches per rank).
"""

import json
import sys

from accelerate import Accelerator

from hf_egt import OBJECTIVE_MODES, GroupObjective
from tests.distributed.ending import finish
from tests.distributed_batches import make_batches

accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
assert world == 2, f"expected 2 processes, got {world}"
results = {}
for mode in OBJECTIVE_MODES:
    single = GroupObjective(num_groups=4, objective=mode, group_step_size=0.5)
    windowed = GroupObjective(num_groups=4, objective=mode, group_step_size=0.5)
    trace = {"single_loss": [], "single_weights": [], "window_loss": [], "window_weights": []}
    for losses, ids, tokens in make_batches():
        shard = slice(rank * len(ids) // world, (rank + 1) * len(ids) // world)
        out = single(losses[shard], ids[shard], example_weights=tokens[shard])
        # the loss each rank backpropagates adds up (over ranks) to the global loss
        trace["single_loss"].append(accelerator.reduce(out.loss.detach(), reduction="sum").item())
        trace["single_weights"].append(single.weights.tolist())

        mine = (losses[shard], ids[shard], tokens[shard])
        halves = [tuple(t[: len(t) // 2] for t in mine), tuple(t[len(t) // 2 :] for t in mine)]
        windowed.begin_window([h[1] for h in halves], [h[2] for h in halves])
        local = sum(windowed.window_loss(*h).loss for h in halves)
        trace["window_loss"].append(accelerator.reduce(local.detach(), reduction="sum").item())
        windowed.end_window()
        trace["window_weights"].append(windowed.weights.tolist())
    results[mode] = trace
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as handle:
        json.dump(results, handle)
finish(accelerator)
