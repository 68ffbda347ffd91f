"""EGTTrainer's per-group evaluation: each eval row counted once on any number of processes, the token-pooled
"overall" shared with `evaluate_causal_lm`, and training that draws the same randomness with or without it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_egt import EGTTrainer
from tests.conftest import accelerate_launch
from tests.integrations.trainer.test_egt_trainer import config, lora, lora_params
from tests.trainer_utils import group_dataset, tiny_llama

EVAL_COUNTS = {"a": 9, "b": 8}  # 17 rows: two processes get 9 each, one of them repeated


def evaluation_trainer(output_dir, **overrides) -> EGTTrainer:
    return EGTTrainer(
        model=tiny_llama(),
        args=config(output_dir, **{"per_device_eval_batch_size": 4, **overrides}),
        train_dataset=group_dataset({"a": 20, "b": 12}, seed=0),
        eval_dataset=group_dataset(EVAL_COUNTS, seed=1),
        peft_config=lora(),
    )


def one_process(output_dir, base: bool) -> tuple[dict, dict]:
    trainer = evaluation_trainer(output_dir, per_device_train_batch_size=8)
    result = {}
    if base:
        result["base"] = trainer.evaluate_groups()
        result["base_sums"] = [tensor.tolist() for tensor in trainer._last_eval_group_sums]
    trainer.train()
    result["trained"] = trainer.evaluate_groups()
    result["trained_sums"] = [tensor.tolist() for tensor in trainer._last_eval_group_sums]
    return result, lora_params(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["base", "no_base"])
def test_two_processes_count_each_eval_row_once_and_train_alike(tmp_path, mode):
    expected, params = one_process(tmp_path / "one", base=mode == "base")
    accelerate_launch("eval_two_processes.py", str(tmp_path / "two"), mode)
    got = json.loads((tmp_path / "two" / "result.json").read_text())
    for key in ["trained_sums", *(["base_sums"] if mode == "base" else [])]:
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(expected[key]), rtol=1e-6, atol=0)
    for key in ["trained", *(["base"] if mode == "base" else [])]:
        assert got[key]["counts"] == expected[key]["counts"] == EVAL_COUNTS
        for group in EVAL_COUNTS:
            assert got[key]["per_group"][group] == pytest.approx(expected[key]["per_group"][group], rel=1e-6)
        assert got[key]["overall"] == pytest.approx(expected[key]["overall"], rel=1e-6)
    two = load_file(str(tmp_path / "two" / "params.safetensors"))
    assert two.keys() == params.keys()
    for name, value in params.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-6, msg=name)
