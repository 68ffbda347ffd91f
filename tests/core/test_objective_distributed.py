"""Two CPU processes under `accelerate launch`, each with half of every batch, match one process with all of it."""

import json

import pytest
import torch

from hf_egt import OBJECTIVE_MODES, GroupObjective
from tests.conftest import accelerate_launch
from tests.distributed_batches import make_batches


def single_process_trace(mode):
    single = GroupObjective(num_groups=4, objective=mode, group_step_size=0.5)
    windowed = GroupObjective(num_groups=4, objective=mode, group_step_size=0.5)
    trace = {"single_loss": [], "single_weights": [], "window_loss": [], "window_weights": []}
    for losses, ids, tokens in make_batches():
        out = single(losses, ids, example_weights=tokens)
        trace["single_loss"].append(out.loss.item())
        trace["single_weights"].append(single.weights.tolist())
        windowed.begin_window([ids], [tokens])
        trace["window_loss"].append(windowed.window_loss(losses, ids, tokens).loss.item())
        windowed.end_window()
        trace["window_weights"].append(windowed.weights.tolist())
    return trace


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    output = tmp_path / "trace.json"
    accelerate_launch("objective_halves.py", str(output))
    distributed = json.loads(output.read_text())
    for mode in OBJECTIVE_MODES:
        expected = single_process_trace(mode)
        for key, values in expected.items():
            assert torch.allclose(torch.tensor(distributed[mode][key]), torch.tensor(values), atol=1e-10), (mode, key)
