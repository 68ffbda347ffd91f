"""hf_egt.integrations.evaluation: the per-text and per-byte units beside perplexity, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from hf_egt.integrations.evaluation import evaluate_causal_lm, predicted_byte_counts, sequence_nll

from .trainer_utils import tiny_bpe_llama

TEXTS = [
    "le petit chat dort sur le tapis",
    "the small cat sleeps on the mat",
    "der kleine Kater schläft auf der Matte, ganz ruhig",
    "el gato pequeño duerme",
    "a",
]
GROUPS = ["fr", "en", "de", "es", "fr"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_bpe_llama(TEXTS * 3, 300)


@pytest.mark.parametrize("max_length", [4, 64])
def test_predicted_bytes_are_the_bytes_after_the_first_token(model_and_tokenizer, max_length):
    _, tokenizer = model_and_tokenizer
    counts = predicted_byte_counts(tokenizer, TEXTS, max_length)
    for text, count in zip(TEXTS, counts.tolist()):
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        # hand computation: decode the kept tokens and the first one (byte-level BPE decodes to the exact text)
        expected = len(tokenizer.decode(ids).encode()) - len(tokenizer.decode(ids[:1]).encode())
        assert count == expected
    assert counts[-1] == 0  # "a" is one token: nothing predicted


def test_evaluate_reports_nll_per_text_and_bits_per_byte(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts, groups = TEXTS[:4] * 2, GROUPS[:4] * 2
    result = evaluate_causal_lm(model, tokenizer, texts, groups, batch_size=3, max_length=64, n_bootstrap=100)
    nll, tokens = sequence_nll(model, tokenizer, texts, batch_size=5, max_length=64, chunk_size=None)
    counts = predicted_byte_counts(tokenizer, texts, 64)
    for group in set(groups):
        rows = torch.tensor([g == group for g in groups])
        assert result["sequence_nll"]["per_group"][group] == pytest.approx(float(nll[rows].mean()), rel=1e-5)
        expected_bpb = float(nll[rows].sum() / counts[rows].sum()) / math.log(2)
        assert result["bits_per_byte"]["per_group"][group] == pytest.approx(expected_bpb, rel=1e-5)
        assert result["per_group"][group] == pytest.approx(math.exp(nll[rows].sum() / tokens[rows].sum()), rel=1e-5)
        low, high = result["sequence_nll"]["ci"][group]
        assert low <= result["sequence_nll"]["per_group"][group] <= high
    worst = max(result["sequence_nll"]["per_group"], key=result["sequence_nll"]["per_group"].get)
    assert result["sequence_nll"]["worst_group"] == worst
    assert result["counts"]["de"] == {"examples": 2, "tokens": int(tokens[2] * 2), "bytes": int(counts[2] * 2)}
