"""``benchmarks/quality_bold.py`` on a tiny random Llama and synthetic records (no Hub, no SmolLM2)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from benchmarks.cells import cell_path
from benchmarks.quality_bold import (
    markdown_table,
    run_quality,
    summarize_cells,
    summarize_domain,
)
from hf_egt.apps.recipe import DEFAULT, lora_config
from tests.trainer_utils import tiny_bpe_llama

GROUPS = ("a", "b", "c")
TEMPLATES = {
    "a": "the small cat {} sat on the warm mat near the garden",
    "b": "a big dog {} ran across the green park to find a stick",
    "c": "an old bird {} sang in the tall tree at dawn",
}
SETTINGS = replace(
    DEFAULT,
    max_train_per_group=6,
    max_eval_per_group=3,
    eval_fraction=0.34,
    max_steps=2,
    per_device_train_batch_size=4,
    max_length=16,
    lora_r=2,
    lora_alpha=4,
    lora_last_layers=1,
    per_device_eval_batch_size=4,
    feature_model=None,
)


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    return tiny_bpe_llama([template.format(i) for template in TEMPLATES.values() for i in range(10)], 200, 64)


def synthetic_records(domain: str) -> list[dict]:
    """Three groups, three people per group, three sentences per person (domain names only vary the person ids)."""
    return [
        {"text": TEMPLATES[group].format(f"{person}{sentence}"), "group": group, "person": f"{domain}-{person}"}
        for group in GROUPS
        for person in range(3)
        for sentence in range(3)
    ]


def _cell(seed: int, per_group: dict[str, float], overall: float) -> dict:
    worst = max(per_group, key=per_group.get)
    result = {"per_group": per_group, "worst_group": worst, "gap": max(per_group.values()) - min(per_group.values())}
    return {"method": "erm", "seed": seed, "result": {**result, "overall": overall}}


# ------------------------------------------------------------------------------------------------------ aggregation


def test_summary_averages_per_seed_gaps_and_worst_groups():
    cells = [
        _cell(0, {"x": 10.0, "y": 14.0}, 12.0),  # gap 4, worst y (14)
        _cell(1, {"x": 16.0, "y": 12.0}, 13.0),  # gap 4, worst x (16)
        _cell(2, {"x": 13.0, "y": 13.0 + 2.0}, 14.0),  # gap 2, worst y (15)
    ]
    summary = summarize_cells(cells)
    assert summary["per_group"]["x"] == pytest.approx((13.0, 3.0))
    assert summary["per_group"]["y"] == pytest.approx(
        (41 / 3, math.sqrt(((14 - 41 / 3) ** 2 + (12 - 41 / 3) ** 2 + (15 - 41 / 3) ** 2) / 2))
    )
    # the mean of per-seed gaps (10/3), not the gap of the mean perplexities (|13 - 41/3| = 2/3)
    assert summary["gap"] == pytest.approx((10 / 3, math.sqrt(((4 - 10 / 3) ** 2 * 2 + (2 - 10 / 3) ** 2) / 2)))
    assert summary["worst"] == pytest.approx((15.0, 1.0))
    assert summary["worst_groups"] == ["y", "x", "y"]
    assert summary["overall"] == pytest.approx((13.0, 1.0))

    base = {"per_group": {"x": 20.0, "y": 30.0}, "worst_group": "y", "gap": 10.0, "overall": 25.0}
    table = markdown_table(summarize_domain(base, cells, ["erm", "minmax"]))
    lines = table.splitlines()
    assert lines[0] == "| group | base | erm (3 seeds) |"  # minmax has no finished cell: no column
    assert "| x | 20.00 | 13.00 ± 3.00 |" in lines
    assert "| worst group | y | y (2/3), x (1/3) |" in lines
    assert "| **worst-group perplexity** | **30.00** | **15.00 ± 1.00** |" in lines
    assert "| overall | 25.00 | 13.00 ± 1.00 |" in lines


# ---------------------------------------------------------------------------------------------------- hyper adapter
def test_hyper_adapter_sits_on_the_same_layers_as_the_lora_one(tiny_model_and_tokenizer):
    import copy

    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from hf_egt.integrations.hyper import HyperLoRAModel

    model, _ = tiny_model_and_tokenizer
    lora = get_peft_model(copy.deepcopy(model), lora_config(model, SETTINGS))
    hyper = HyperLoRAModel(copy.deepcopy(model), lora_config(model, SETTINGS, hyper=True))

    def adapted(peft_model):
        return {name[name.index("layers.") :] for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}

    expected = {f"layers.1.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
    expected |= {f"layers.1.{p}" for p in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert adapted(lora) == adapted(hyper.peft_model) == expected


# ------------------------------------------------------------------------------------------------------- end to end
def test_end_to_end_cells_resume_and_tables(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    loads = []

    def loader():
        loads.append(1)
        return model, tokenizer

    kwargs = {
        "domains": ["dev"],
        "held_out_domain": "held",
        "seeds": [0, 1],
        "methods": ["minmax", "hyper"],
        "settings": SETTINGS,
        "model_loader": loader,
        "records_loader": synthetic_records,
        "command": "python benchmarks/quality_bold.py",
    }
    results = run_quality(tmp_path, **kwargs)
    assert list(results["summaries"]) == ["dev", "held"]  # held-out domain last
    for domain in ("dev", "held"):
        for method in kwargs["methods"]:
            for seed in kwargs["seeds"]:
                cell = json.loads(cell_path(tmp_path, domain, method, seed).read_text())
                per_group = cell["result"]["per_group"]
                assert sorted(per_group) == list(GROUPS)
                assert all(math.isfinite(value) and value > 1 for value in per_group.values())
        methods = results["summaries"][domain]["methods"]
        assert methods["minmax"]["seeds"] == [0, 1]
        # the training seed changes the adapter: two seeds give different perplexities
        assert methods["minmax"]["per_group"]["a"][1] > 0
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.index("## dev") < markdown.index("## held (held out")
    assert (tmp_path / "quality_bold.png").stat().st_size > 1000

    # resume: every cell is done, so nothing is loaded or recomputed
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "cells").rglob("*.json")}
    assert len(stamps) == 2 * (1 + 2 * 2)
    run_quality(tmp_path, resume=True, **kwargs)
    assert len(loads) == 1
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    # a killed run: the missing cell alone is redone, with the numbers it had
    missing = cell_path(tmp_path, "held", "minmax", 1)
    before = json.loads(missing.read_text())["result"]["per_group"]
    missing.unlink()
    run_quality(tmp_path, resume=True, **kwargs)
    changed = {path for path, stamp in stamps.items() if path.stat().st_mtime_ns != stamp}
    assert changed == {missing}
    assert json.loads(missing.read_text())["result"]["per_group"] == pytest.approx(before, rel=1e-4)


def test_each_method_at_its_own_best_validation_step(tmp_path, tiny_model_and_tokenizer):
    """With a validation split, every cell keeps the adapter of its lowest validation worst-group perplexity, stores
    its curve, and dro_excess reads the erm cell's reference losses."""
    model, tokenizer = tiny_model_and_tokenizer
    methods = ["erm", "balanced_erm", "dro_stratified", "dro_excess", "dro_heldout", "hyper"]
    results = run_quality(
        tmp_path,
        domains=["dev"],
        held_out_domain=None,
        seeds=[0],
        methods=methods,
        settings=replace(SETTINGS, max_steps=4, eval_fraction=0.34, per_device_train_batch_size=3),
        model_loader=lambda: (model, tokenizer),
        records_loader=synthetic_records,
        validation_fraction=0.5,
        eval_steps=1,
    )
    reference = json.loads((tmp_path / "cells" / "dev" / "erm" / "seed0.reference.json").read_text())["losses"]
    assert len(reference) == sum(results["counts"]["dev"]["train"].values())
    for method in methods:
        cell = json.loads(cell_path(tmp_path, "dev", method, 0).read_text())
        curve = cell["curve"]
        assert [point["step"] for point in curve if "validation" in point] == [1, 2, 3, 4]
        validation = {point["step"]: point["validation"]["worst"] for point in curve if "validation" in point}
        assert cell["best_step"] == min(validation, key=validation.get)
        assert not (
            tmp_path / "trainer" / "dev" / method / "seed0"
        ).exists()  # checkpoints gone once the best is loaded
    assert (tmp_path / "quality_bold_curves.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="validation split"):
        run_quality(
            tmp_path, domains=["dev"], held_out_domain=None, seeds=[0], methods=["dro_heldout"], settings=SETTINGS
        )


def test_the_default_methods_run_without_a_validation_split():
    """The documented default command (no validation split) must not pick a method that needs one."""
    from benchmarks.quality_bold import METHOD_SPECS, TABLE_METHODS, parse_args

    assert parse_args([]).methods == list(TABLE_METHODS)
    assert all("group_update_dataset" not in METHOD_SPECS[method][2] for method in TABLE_METHODS)
