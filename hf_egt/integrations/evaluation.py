"""Per-group evaluation of a causal language model: perplexity per group and the embedding-based EGT divergence.

- Perplexity: token-weighted ``exp(sum NLL / tokens)`` of each group's real sentences; beside it the units that are
  comparable across groups that tokenize differently (languages): NLL per text (``sequence_nll``) and bits per UTF-8
  byte of the scored tokens (``bits_per_byte``).
- EGT: each group's sentences are cut to a prefix (the first words), the model continues the prefix, and the real and
  generated sentences of each group are embedded with a sentence encoder and compared with
  ``hf_egt.core.metrics.egt_report`` (per-group divergence, gap, worst group).

``write_report`` turns results of one or several runs (``{"base": ..., "minmax": ...}``) into ``report.json``,
``report.md`` and a grouped bar plot.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_egt.core.losses import IGNORE_INDEX, causal_lm_token_losses
from hf_egt.core.metrics import (
    RECOMMENDED_TEXT_DIVERGENCE,
    check_runs,
    egt_report,
    group_run,
    likelihood_report,
    minimum_samples,
    runs_table,
)
from hf_egt.core.metrics.inputs import check_group_labels, check_not_empty
from hf_egt.core.metrics.plot import plot_runs
from hf_egt.core.metrics.validation import groups_below_minimum
from hf_egt.integrations.output_head import TOKEN_LOSS_LABELS, add_token_loss_forward, check_token_loss_forward

logger = logging.getLogger(__name__)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sequence_nll(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    desc: str = "perplexity",
    chunk_size: int | None = 256,
    prefixes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and number of predicted tokens of each text, as two float tensors of shape ``(N,)``.

    With ``prefixes`` (one per text, e.g. a group tag), each text is scored *given* its prefix: the prefix's tokens
    come first and are not scored, and neither is the text's first token, so exactly the same tokens are scored as
    without prefixes (a conditional and an unconditional model compare on the same targets).

    With ``chunk_size`` (tokens), the losses come from the hidden states through the output embedding in chunks
    (``hf_egt.integrations.output_head``; no ``(batch, seq_len, vocab)`` logits) when the model allows it and the two
    paths agree on the first batch; otherwise, or with ``chunk_size=None``, from the full logits (the reason is logged).
    """
    if prefixes is not None and len(prefixes) != len(texts):
        raise ValueError(f"`prefixes` must have one entry per text, got {len(prefixes)} for {len(texts)} texts.")
    model.eval()
    chunked = chunk_size is not None
    if chunked:
        reason = add_token_loss_forward(model, chunk_size)
        if reason is not None:
            logger.info("Per-token losses from the full logits: %s.", reason)
            chunked = False
    device = _model_device(model)
    total_nll = torch.zeros(len(texts), dtype=torch.float64)
    total_tokens = torch.zeros(len(texts), dtype=torch.float64)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False):
            rows = slice(start, start + batch_size)
            if prefixes is None:
                batch = tokenizer(
                    list(texts[rows]), return_tensors="pt", padding=True, truncation=True, max_length=max_length
                )
                inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            else:
                inputs, labels = prefixed_batch(tokenizer, prefixes[rows], texts[rows], max_length)
            inputs, labels = {k: v.to(device) for k, v in inputs.items()}, labels.to(device)
            if chunked and start == 0:
                reason = check_token_loss_forward(model, inputs, labels)
                if reason is not None:
                    logger.warning("Per-token losses from the full logits: %s.", reason)
                    chunked = False
            if chunked:
                outputs = model(**inputs, **{TOKEN_LOSS_LABELS: labels})
                token_losses, mask = outputs["token_losses"], outputs["label_mask"]
            else:
                token_losses, mask = causal_lm_token_losses(model(**inputs).logits, labels)
            total_nll[rows] = token_losses.sum(dim=1).double().cpu()
            total_tokens[rows] = mask.sum(dim=1).double().cpu()
    finally:
        tokenizer.padding_side = padding_side
    return total_nll, total_tokens


def prefixed_batch(
    tokenizer, prefixes: Sequence[str], texts: Sequence[str], max_length: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(inputs, labels)`` of ``prefix + text`` rows, right-padded: each part tokenized on its own (the text exactly
    as without a prefix, truncated to ``max_length``), labels ``-100`` on the prefix and on the text's first token."""
    prefix_ids = tokenizer(list(prefixes), add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    rows = [prefix + text for prefix, text in zip(prefix_ids, text_ids)]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (prefix, text) in enumerate(zip(prefix_ids, text_ids)):
        scored = slice(len(prefix) + 1, len(prefix) + len(text))
        labels[row, scored] = input_ids[row, scored]
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


def predicted_byte_counts(tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """UTF-8 bytes of the text that each text's *predicted* tokens cover (float tensor ``(N,)``), under the same
    truncation as ``sequence_nll``: from the end of the first token (never predicted; a special token such as BOS covers
    no text) to the end of the last token kept. Needs a fast tokenizer (character offsets); a character whose bytes are
    split between tokens counts whole to the token where it starts (offsets are in characters)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"Bits per byte need a fast tokenizer (character offsets); {type(tokenizer).__name__} is not.")
    counts = torch.zeros(len(texts), dtype=torch.float64)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    for row, (text, offsets) in enumerate(zip(texts, encoded["offset_mapping"])):
        if len(offsets) > 1:
            first_end, last_end = offsets[0][1], max(end for _, end in offsets)
            counts[row] = len(text[:last_end].encode("utf-8")) - len(text[:first_end].encode("utf-8"))
    return counts


def group_perplexity(
    nll: torch.Tensor,
    tokens: torch.Tensor,
    groups: Sequence[str],
    byte_counts: torch.Tensor | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """Per-group token-weighted mean NLL and perplexity from per-text sums (``hf_egt.core.metrics.likelihood_report``),
    groups in sorted order, with the overall values, and the NLL per text (and bits per byte with ``byte_counts``).

    A text of a single token has no predicted token and carries no likelihood: it is left out.

    Returns ``{"loss_per_group", "per_group" (perplexity), "overall_loss", "overall" (perplexity), "sequence_nll"}``
    (and ``"bits_per_byte"``), the last ones ``likelihood_report``'s summaries (``per_group``, ``gap``,
    ``worst_group``, ``overall``, ``ci`` with ``n_bootstrap`` > 0), plus ``"scored"`` (texts, tokens and bytes per
    group).
    """
    scored = (tokens > 0).tolist()
    kept = [group for group, keep in zip(groups, scored) if keep]
    unscored = sorted(set(groups) - set(kept))
    if unscored:
        raise ValueError(f"Groups {unscored} have no text with a predicted token (texts of at least 2 tokens needed).")
    rows = torch.tensor(scored)
    report = likelihood_report(
        nll[rows],
        tokens[rows],
        kept,
        n_bootstrap=n_bootstrap,
        seed=seed,
        byte_counts=None if byte_counts is None else byte_counts[rows],
    )
    order = sorted(report["nll"]["per_group"])
    result = {
        "loss_per_group": {group: report["nll"]["per_group"][group] for group in order},
        "per_group": {group: report["perplexity"]["per_group"][group] for group in order},
        "overall_loss": report["nll"]["overall"],
        "overall": report["perplexity"]["overall"],
    }
    for unit in ("sequence_nll", "bits_per_byte"):
        if unit in report:
            result[unit] = {**report[unit], "per_group": {g: report[unit]["per_group"][g] for g in order}}
    result["scored"] = {group: report["counts"][group] for group in order}
    return result


def sentence_prefixes(texts: Sequence[str], num_words: int = 4) -> list[str]:
    """The first ``num_words`` words of each text: the prompts whose continuations are compared with the real text."""
    return [" ".join(text.split()[:num_words]) for text in texts]


def left_padded_prefixed_prompts(
    tokenizer, prefixes: Sequence[str], prompts: Sequence[str]
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """``prefix + prompt`` rows, left-padded for generation (each part tokenized on its own, as ``prefixed_batch``),
    and the position where each row's prompt starts."""
    prefix_ids = tokenizer(list(prefixes), add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    rows = [prefix + prompt for prefix, prompt in zip(prefix_ids, prompt_ids)]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    starts = [width - len(prompt) for prompt in prompt_ids]
    return {"input_ids": input_ids, "attention_mask": attention_mask}, starts


@torch.no_grad()
def generate_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    do_sample: bool = True,
    top_p: float = 0.95,
    seed: int = 0,
    desc: str = "generation",
    prefixes: Sequence[str] | None = None,
) -> list[str]:
    """Prompt + sampled continuation of each prompt, decoded without special tokens.

    With ``prefixes`` (one per prompt, e.g. a group tag), each prompt is generated *given* its prefix, as a
    group-conditional model was trained (``prefixed_batch``: the prefix and the prompt tokenized each on its own), and
    the prefix is left out of the returned text: the same prompt + continuation as without prefixes.
    """
    if prefixes is not None and len(prefixes) != len(prompts):
        raise ValueError(f"`prefixes` must have one entry per prompt, got {len(prefixes)} for {len(prompts)} prompts.")
    model.eval()
    device = _model_device(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            rows = slice(start, start + batch_size)
            if prefixes is None:
                batch = tokenizer(list(prompts[rows]), return_tensors="pt", padding=True)
                prompt_starts = [0] * batch["input_ids"].shape[0]  # decoding skips the left padding
            else:
                batch, prompt_starts = left_padded_prefixed_prompts(tokenizer, prefixes[rows], prompts[rows])
            generated = model.generate(
                **{k: v.to(device) for k, v in batch.items()},
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                top_p=top_p if do_sample else None,
                top_k=None,
                temperature=None if not do_sample else 1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
            outputs.extend(
                tokenizer.decode(row[begin:], skip_special_tokens=True) for row, begin in zip(generated, prompt_starts)
            )
    finally:
        tokenizer.padding_side = padding_side
        torch.random.set_rng_state(generator_state)
    return [text.strip() for text in outputs]


def embedding_egt(
    real_texts: Sequence[str],
    real_groups: Sequence[str],
    *,
    generated_texts: Sequence[str],
    generated_groups: Sequence[str],
    feature_model,
    divergence: str = RECOMMENDED_TEXT_DIVERGENCE,
    n_bootstrap: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    **estimator_kwargs,
) -> dict:
    """EGT report (``hf_egt.core.metrics.egt_report``) of generated vs real sentences embedded by ``feature_model``
    (the one embed-then-report of the library, the evaluate module's included).

    ``feature_model`` is a Hub id or folder of a sentence encoder, or an already loaded ``(model, tokenizer)`` pair;
    ``None`` when ``real_texts`` and ``generated_texts`` are embeddings already (arrays of shape ``(n, dim)``).
    Texts are embedded L2-normalised (sentence-transformers' Normalize module, as in all-MiniLM-L6-v2, and MAUVE's
    preprocessing).
    The group sizes are checked against ``minimum_samples`` before anything is embedded. Intervals, noise floors and
    the gap's p-value are on by default (``n_bootstrap=None``: the estimator's default).
    """
    from hf_egt.integrations.features import embed_texts, load_text_encoder

    check_not_empty(real_texts, "real_texts")
    check_not_empty(generated_texts, "generated_texts")
    real_groups = check_group_labels(real_groups, "real_groups")
    generated_groups = check_group_labels(generated_groups, "generated_groups")
    minimum = minimum_samples(divergence, **estimator_kwargs)
    real_counts, generated_counts = Counter(real_groups), Counter(generated_groups)
    smaller_side = {
        group: min(count, generated_counts[group]) for group, count in real_counts.items() if group in generated_counts
    }
    small = {
        str(group): (real_counts[group], generated_counts[group])
        for group in groups_below_minimum(smaller_side, minimum)
    }
    if small:  # before embedding anything
        raise ValueError(
            f"Group(s) {small} ((real, generated) texts) have fewer texts than the {divergence!r} estimator needs "
            f"({minimum} per group and side, hf_egt.core.metrics.minimum_samples); pass more texts per group."
        )

    if feature_model is None:
        real, generated = real_texts, generated_texts
    else:
        encoder = feature_model if isinstance(feature_model, tuple) else load_text_encoder(feature_model)
        real = embed_texts(list(real_texts), encoder, batch_size=batch_size, normalize=True)
        generated = embed_texts(list(generated_texts), encoder, batch_size=batch_size, normalize=True)
    return egt_report(
        real,
        list(real_groups),
        generated_features=generated,
        generated_groups=list(generated_groups),
        divergence=divergence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        **estimator_kwargs,
    )


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


# why a value is undefined, by the name of the field that holds it (the first match along its path)
UNDEFINED_REASONS = {
    "per_group": "the group has no real or no generated samples (see `missing`), or no scored token",
    "ci": "no interval: n_bootstrap = 0, or the group's half-samples are below the estimator's minimum",
    "null_floor": "no floor: n_null = 0, or halves of the group's real samples are below the estimator's minimum",
    "gap_p_value": "no p-value: n_permutations = 0, or fewer than two groups compared",
    "gap": "fewer than two groups have a value",
    "ratio": "the best group's value is 0 (ratio infinite) or undefined",
}


def strict_jsonable(value, path: str = "") -> tuple[object, dict[str, str]]:
    """``(value as strict JSON, reasons)``: NaN and infinite floats become ``null`` (JSON has no NaN or Infinity),
    and ``reasons`` maps the path of each (``runs/base/egt/gap_p_value``) to why it is undefined."""
    value = _jsonable(value)
    reasons: dict[str, str] = {}
    if isinstance(value, float) and not math.isfinite(value):
        names = path.split("/")
        why = next((UNDEFINED_REASONS[name] for name in names if name in UNDEFINED_REASONS), "undefined")
        reasons[path] = f"{value} in the computation: {why}"
        return None, reasons
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            converted[key], found = strict_jsonable(item, f"{path}/{key}" if path else key)
            reasons.update(found)
        return converted, reasons
    if isinstance(value, list):
        converted = []
        for index, item in enumerate(value):
            item, found = strict_jsonable(item, f"{path}/{index}")
            converted.append(item)
            reasons.update(found)
        return converted, reasons
    return value, reasons


def strict_json_dumps(payload: Mapping, indent: int = 2) -> str:
    """``payload`` as strict JSON (``json.loads`` of any standard parser reads it): undefined values are ``null``
    and an ``"undefined"`` entry gives, by path, the reason of each."""
    converted, reasons = strict_jsonable(dict(payload))
    if reasons:
        converted["undefined"] = reasons
    return json.dumps(converted, indent=indent, allow_nan=False)


def groups_too_small_for_egt(
    groups: Sequence[str], divergence: str, max_prompts_per_group: int | None
) -> tuple[int, dict[str, int]]:
    """``(minimum, {group: prompts})``: the groups whose number of prompts (rows, capped at ``max_prompts_per_group``)
    is below what ``divergence``'s estimator needs (``hf_egt.core.metrics.validation.minimum_samples``)."""
    minimum = minimum_samples(divergence)
    small = groups_below_minimum(groups, minimum, cap=max_prompts_per_group or None)
    return minimum, dict(sorted(small.items()))


def evaluate_causal_lm(
    model,
    tokenizer,
    texts: Sequence[str],
    groups: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    feature_model=None,
    num_prompt_words: int = 4,
    max_new_tokens: int = 24,
    max_prompts_per_group: int | None = None,
    divergence: str = RECOMMENDED_TEXT_DIVERGENCE,
    seed: int = 0,
    name: str = "model",
    n_bootstrap: int = 0,
    prefixes: Sequence[str] | None = None,
) -> dict:
    """Per-group perplexity (and, with ``feature_model``, the EGT divergence of generated vs real text) of a model.

    Returns a ``hf_egt.core.metrics.GroupRun`` (``"per_group"``, ``"counts"`` (scored texts per group), ``"gap"``,
    ``"ratio"``, ``"worst_group"``, ``"best_group"``, ``"overall"`` (token-pooled perplexity, as
    ``EGTTrainer.evaluate_groups``), ``"metric": "perplexity"``) with ``"loss_per_group"`` and ``"overall_loss"``,
    the per-text and per-byte units ``"sequence_nll"`` and ``"bits_per_byte"`` (each ``per_group``, ``gap``,
    ``worst_group``, ``overall`` and a 95 % bootstrap ``ci`` over texts with ``n_bootstrap`` > 0), ``"scored"``
    (texts, tokens and bytes per group), plus ``"egt"`` (the EGT report) when ``feature_model`` is given.
    With ``prefixes`` (e.g. a group tag per text, for a group-conditional model), the likelihood of each text is taken
    given its prefix, on the same scored tokens (``sequence_nll``), and each generation prompt (the text's first
    words) is generated given its prefix too; the prefix is not part of the generated text the EGT compares.
    """
    groups = [str(group) for group in groups]
    if feature_model is not None:  # before any work: the estimator's minimum sample size per group
        minimum, small = groups_too_small_for_egt(groups, divergence, max_prompts_per_group)
        if small:
            raise ValueError(
                f"Group(s) {small} have fewer prompts than the {divergence!r} estimator needs ({minimum} per group); "
                "pass more texts per group, a larger `max_prompts_per_group`, or `feature_model=None`."
            )
    nll, tokens = sequence_nll(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        max_length=max_length,
        desc=f"{name}: perplexity",
        prefixes=prefixes,
    )
    byte_counts = predicted_byte_counts(tokenizer, texts, max_length) if getattr(tokenizer, "is_fast", False) else None
    perplexity = group_perplexity(nll, tokens, groups, byte_counts, n_bootstrap=n_bootstrap, seed=seed)
    counts = {group: perplexity["scored"][group]["examples"] for group in perplexity["per_group"]}
    result = {**group_run(perplexity["per_group"], counts, perplexity["overall"]), **perplexity}
    if feature_model is not None:
        chosen = _prompt_rows(groups, max_prompts_per_group, seed)
        real = [texts[i] for i in chosen]
        chosen_groups = [groups[i] for i in chosen]
        generated = generate_continuations(
            model,
            tokenizer,
            sentence_prefixes(real, num_prompt_words),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
            desc=f"{name}: generation",
            prefixes=None if prefixes is None else [prefixes[i] for i in chosen],
        )
        report = embedding_egt(
            real,
            chosen_groups,
            generated_texts=generated,
            generated_groups=chosen_groups,
            feature_model=feature_model,
            divergence=divergence,
            seed=seed,
        )
        result["egt"] = _jsonable(report)
        result["samples"] = {
            group: [g for g, label in zip(generated, chosen_groups) if label == group][:3]
            for group in sorted(set(groups))
        }
    return result


def _prompt_rows(groups: Sequence[str], max_per_group: int | None, seed: int) -> list[int]:
    """Indices of at most ``max_per_group`` rows of each group (random with ``seed``), sorted."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for group in sorted(set(groups)):
        rows = [i for i, g in enumerate(groups) if g == group]
        if max_per_group is not None and len(rows) > max_per_group:
            order = torch.randperm(len(rows), generator=generator)[:max_per_group]
            rows = [rows[i] for i in order.tolist()]
        chosen.extend(rows)
    return sorted(chosen)


def group_weight_history(log_history: Sequence[Mapping]) -> dict[str, list[tuple[int, float]]]:
    """Per group, the ``(step, weight)`` pairs of the ``group_weight/<group>`` entries ``EGTTrainer`` logs (a
    ``Trainer``'s ``state.log_history``), in step order."""
    history: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("group_weight/"):
                history.setdefault(key.split("/", 1)[1], []).append((int(entry["step"]), float(value)))
    return {group: sorted(points) for group, points in sorted(history.items())}


def write_report(
    runs: Mapping[str, Mapping],
    output_dir: str | Path,
    *,
    title: str = "hf-egt report",
    metric: str = "perplexity",
    config: Mapping | None = None,
    command: str | None = None,
    notes: str | None = None,
    held_out: str | None = None,
    dropped: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` for one or several runs, each once; return their paths.
    ``notes`` (markdown) is printed under the per-group table; ``held_out`` (how the evaluated rows were held out) and
    ``dropped`` (what was left out of training or evaluation) close the markdown."""
    check_runs(runs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / "report.json", "md": output_dir / "report.md", "png": output_dir / "report.png"}
    payload = {"metric": metric, "runs": _jsonable(dict(runs)), "config": _jsonable(dict(config or {}))}
    if command:
        payload["command"] = command
    paths["json"].write_text(strict_json_dumps(payload), encoding="utf-8")
    plot_runs(runs, paths["png"], metric=metric)
    markdown = report_markdown(
        runs, title=title, metric=metric, command=command, notes=notes, held_out=held_out, dropped=dropped
    )
    paths["md"].write_text(markdown, encoding="utf-8")
    return paths


def egt_markdown(runs: Mapping[str, Mapping]) -> str:
    """The EGT tables of the runs that have one (counts, intervals, floors, gap p-value; ``report_table``) and what
    a perplexity gap means, for the report and the model card."""
    from hf_egt.core.metrics import report_table

    parts = []
    with_egt = {name: run["egt"] for name, run in runs.items() if "egt" in run}
    if with_egt:
        parts += [
            "EGT: divergence between each group's real sentences and the model's continuations of their first words "
            "(sentence embeddings). The null floor is the same estimator between two halves of the group's own real "
            "sentences: a value within it is indistinguishable from sampling noise; the gap's p-value comes from "
            "permuting the group labels (docs/metric.md).",
            "",
        ]
        for name, report in with_egt.items():
            parts += [f"**{name}**", "", report_table(report), ""]
    parts += [
        "Per-group perplexity on held-out text is exp(KL(P_a || Q_a) + H(P_a)) per token: a perplexity gap mixes "
        "how well the model fits each group with each group's own entropy.",
        "",
    ]
    return "\n".join(parts)


def report_markdown(
    runs: Mapping[str, Mapping],
    *,
    title: str,
    metric: str = "perplexity",
    command: str | None = None,
    notes: str | None = None,
    held_out: str | None = None,
    dropped: Sequence[str] = (),
) -> str:
    """The markdown body of a report: the per-group table, ``notes``, the EGT table when present, the plot, the
    command, how the evaluated rows were held out and what was left out."""
    parts = [f"# {title}", "", f"{metric.capitalize()} per group (lower is better):", "", runs_table(runs), ""]
    if notes:
        parts += [notes, ""]
    parts += [egt_markdown(runs), "![per-group results](report.png)", ""]
    if command:
        parts += ["Reproduce with:", "", "```bash", command, "```", ""]
    if held_out:
        parts += [f"Evaluation rows: {held_out}.", ""]
    if dropped:
        parts += ["Left out:", "", *[f"- {item}" for item in dropped], ""]
    return "\n".join(parts)
