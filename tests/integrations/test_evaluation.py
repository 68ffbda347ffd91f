"""hf_egt.integrations.evaluation: the run summaries every surface reads, strict JSON reports, and the per-text and
per-byte units beside perplexity against hand computations."""

import json
import math

import pytest
import torch

from hf_egt.integrations import evaluation
from hf_egt.integrations.evaluation import (
    evaluate_causal_lm,
    generate_continuations,
    predicted_byte_counts,
    sequence_nll,
    strict_json_dumps,
    write_report,
)
from tests.conftest import load_strict_json
from tests.trainer_utils import tiny_bpe_llama


def test_undefined_values_are_null_with_their_reason_beside_them():
    payload = {
        "runs": {
            "base": {
                "per_group": {"a": 2.0, "b": math.nan},
                "gap": 0.0,
                "ratio": math.inf,
                "egt": {"gap_p_value": math.nan, "ci": {"a": [math.nan, math.nan]}},
            }
        }
    }
    text = strict_json_dumps(payload)
    decoded = json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in strict JSON"))
    assert decoded["runs"]["base"]["per_group"] == {"a": 2.0, "b": None}
    assert decoded["runs"]["base"]["ratio"] is None and decoded["runs"]["base"]["egt"]["ci"]["a"] == [None, None]
    reasons = decoded["undefined"]
    assert set(reasons) == {
        "runs/base/per_group/b",
        "runs/base/ratio",
        "runs/base/egt/gap_p_value",
        "runs/base/egt/ci/a/0",
        "runs/base/egt/ci/a/1",
    }
    assert "no real or no generated samples" in reasons["runs/base/per_group/b"]
    assert reasons["runs/base/ratio"].startswith("inf") and "n_permutations = 0" in reasons["runs/base/egt/gap_p_value"]
    assert "undefined" not in json.loads(strict_json_dumps({"runs": {"x": {"gap": 1.0}}}))


def test_write_report_writes_strict_json(tmp_path):
    run = {
        "metric": "perplexity",
        "per_group": {"a": 3.0, "b": math.inf},
        "counts": {"a": 2, "b": 1},
        "gap": math.inf,
        "ratio": math.inf,
        "worst_group": "b",
        "best_group": "a",
        "overall": 4.0,
    }
    paths = write_report({"base": run}, tmp_path)
    report = load_strict_json(paths["json"])
    assert report["runs"]["base"]["per_group"]["b"] is None and "runs/base/gap" in report["undefined"]


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
    assert result["scored"]["de"] == {"examples": 2, "tokens": int(tokens[2] * 2), "bytes": int(counts[2] * 2)}
    assert result["counts"] == {"de": 2, "en": 2, "es": 2, "fr": 2}


def test_prefixes_condition_the_same_scored_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts, prefixes = TEXTS[:4], ["<fr> ", "<en> ", "<de> ", "<es> "]
    plain_nll, plain_tokens = sequence_nll(model, tokenizer, texts, batch_size=3, max_length=6, chunk_size=None)
    nll, tokens = sequence_nll(model, tokenizer, texts, batch_size=3, max_length=6, prefixes=prefixes, chunk_size=4)
    torch.testing.assert_close(tokens, plain_tokens)  # the same targets, conditioned on more
    for row, (prefix, text) in enumerate(zip(prefixes, texts)):
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        text_ids = tokenizer(text, truncation=True, max_length=6)["input_ids"]
        ids = torch.tensor([prefix_ids + text_ids])
        with torch.no_grad():
            log_probs = model(input_ids=ids).logits.double().log_softmax(-1)[0]
        targets = range(len(prefix_ids) + 1, len(prefix_ids) + len(text_ids))  # text tokens after its first
        expected = -sum(log_probs[t - 1, ids[0, t]].item() for t in targets)
        assert nll[row].item() == pytest.approx(expected, rel=1e-4)
    assert not torch.allclose(nll, plain_nll)
    with pytest.raises(ValueError, match="`prefixes` must have one entry per text, got 1 for 4 texts"):
        sequence_nll(model, tokenizer, texts, prefixes=prefixes[:1])


def test_prefixed_generation_equals_each_row_generated_alone_after_its_prefix(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts, prefixes = ["Le chat", "The weather is", "a", "Der Hund ist sehr"], ["<fr> ", "<en>", "<de> ", "<es> "]
    found = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=5, batch_size=3, do_sample=False, prefixes=prefixes
    )
    for text, prompt, prefix in zip(found, prompts, prefixes):
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix_ids + tokenizer(prompt)["input_ids"]])
        alone = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        # hand computation: one unpadded row, the prefix cut off the decoded text
        assert text == tokenizer.decode(alone[0, len(prefix_ids) :], skip_special_tokens=True).strip()
        assert text.startswith(prompt)
    with pytest.raises(ValueError, match="`prefixes` must have one entry per prompt, got 1 for 4 prompts"):
        generate_continuations(model, tokenizer, prompts, prefixes=prefixes[:1])


def test_evaluation_generates_each_prompt_after_its_texts_prefix(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    texts, groups = TEXTS[:4] * 24, GROUPS[:4] * 24  # the estimator needs 20 prompts per group
    prefixes = [f"<{group}>" for group in groups]
    calls = {}

    def recorded_generation(model, tokenizer, prompts, **kwargs):
        calls.update(prompts=prompts, prefixes=kwargs["prefixes"])
        return list(prompts)

    monkeypatch.setattr(evaluation, "generate_continuations", recorded_generation)
    monkeypatch.setattr(evaluation, "embedding_egt", lambda *args, **kwargs: {"per_group": {}})
    evaluate_causal_lm(
        model, tokenizer, texts, groups, feature_model="unused", max_prompts_per_group=20, prefixes=prefixes
    )
    tag_of_prompt = {text.split()[0]: f"<{group}>" for text, group in zip(texts, groups)}
    assert len(calls["prefixes"]) == len(calls["prompts"]) == 80  # 20 prompts of each of the 4 groups
    assert [tag_of_prompt[prompt.split()[0]] for prompt in calls["prompts"]] == calls["prefixes"]


def test_report_markdown_ends_with_how_rows_were_held_out_and_what_was_left_out(tmp_path):
    from hf_egt.core.metrics import group_run

    runs = {"base": group_run({"a": 3.0, "b": 5.0}, {"a": 2, "b": 1}, 4.0)}
    paths = write_report(
        runs, tmp_path, command="hf-egt evaluate x", held_out="20% of each group", dropped=["c: 1 row"]
    )
    markdown = paths["md"].read_text(encoding="utf-8")
    assert markdown.endswith("```\n\nEvaluation rows: 20% of each group.\n\nLeft out:\n\n- c: 1 row\n")
    assert markdown.count("Left out:") == 1
    plain = write_report(runs, tmp_path / "plain", command="hf-egt evaluate x")["md"].read_text(encoding="utf-8")
    assert plain.endswith("```\n") and "Left out" not in plain and "Evaluation rows" not in plain
