"""Languages as groups: SmolLM2-135M fine-tuned on the parallel Bible where English dominates (issue #23).

The setting in which group-robust training is known to help language models (Oren et al. 2019; Zhou et al. 2021;
DoReMi; CTC-DRO): groups with genuinely different distributions (languages), real under-representation (English 6,000
training verses, French / Spanish / German 400 each by default), hundreds of held-out verses per group, and a quality
that is comparable across groups — the NLL of a whole verse (nats per verse), since the verses are parallel (the same
content in every language) while tokenizer fertility is not (SmolLM2 spends ~1.6x more tokens on a French verse).

Every cell trains one (method, seed) LoRA adapter with the demo's recipe (``hf_egt.apps.recipe.train_adapter``),
evaluates the validation verses every ``--eval_steps`` steps and keeps the step with the lowest validation worst-group
NLL per verse (``metric_for_best_model="eval_validation_worst_group_sequence_nll"``): each method at its own best step.
``--stage screen`` stops there (choose on validation); ``--stage test`` also measures the kept adapter once on the test
verses (per-verse NLL with 95 % bootstrap intervals over verses, bits per byte, perplexity). The split of verse ids is
drawn once (``--split_seed``) for all languages and all cells (``hf_egt.apps.bible``).

``--stage test`` also measures each model's EGT on generation: the continuations of the first words of
``--egt_prompts_per_group`` test verses per language against the real verses, in the hidden states of the *base*
SmolLM2 (features that work in every language it reads), with the library's recommended estimator (per-group
codebooks), noise floors and intervals.

Two baselines are not one adapter trained on all languages. ``own_adapter`` trains one LoRA adapter per language
on that language's rows only (same recipe, each kept at its best step on its own language's validation verses): the
reference point of a whole adapter per language. Its four trainings are written as parts
(``cells/<stage>/own_adapter/seed<k>.<language>.json``; a killed run loses at most one) and assembled into the cell
when all exist. ``hyper_own_context`` is HyperLoRA at LoRA's parameter count trained on one-language micro-batches
(``group_sampling="homogeneous"``), each language evaluated with the adapter generated from its own first
``--hyper_context_size`` training verses: does one shared hypernetwork help the small languages? Its cell also holds
the ``context_sensitivity`` of the adapters generated from the four contexts and a swapped-context control (each
minority's validation NLL per verse with English's context, English's with German's). In both, each language is
measured by a separate model or context: the per-language values are exact, but the EGT gap across languages and its
p-value (which need one model's generations of every language) are not computed.

Outputs in ``--output_dir``: ``cells/<stage>/<method>/seed<k>.json`` (``--resume`` skips the cells whose file exists;
a killed run loses at most the cell in progress; several processes started with the same command share the cells,
each claiming one with a ``.lock`` file before running it), ``cells/<stage>/base.json``, ``results.json``,
``results.md``, ``languages_frontier_<stage>.png`` (each method's worst-language NLL per verse against English's: the
cost of helping the small languages, compared at equal majority cost) and ``languages_curves_<stage>.png`` (validation
curves and group weights over training).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/quality_languages.py \\
        --output_dir outputs/languages --resume --stage screen --seeds 0 --methods erm balanced_erm minmax_reference

    ... --methods own_adapter hyper_own_context   # the two baselines (with --stage screen or --stage test)

Development languages: en (majority), fr, es, de. Other languages (``--languages en it ru ro``...) are for confirming
a choice: do not tune on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.cells import base_path, cell_path, claim, mean_std, read_json, release, write_json
from benchmarks.quality_bold import run_cell
from hf_egt.core.metrics.plot import pyplot, save_figure

logger = logging.getLogger("quality_languages")

STRATIFIED = {"group_sampling": "stratified", "group_loss_unit": "sequence"}
# method -> (EGTTrainer objective, HyperLoRA fields or None, further EGTConfig fields); see docs/results.md for the
# source of each. `family` groups the methods that differ by one knob, drawn as one line on the frontier plot.
LANGUAGE_METHODS = {
    "erm": ("erm", None, {}),
    "reweight": ("reweight", None, {}),
    # temperature sampling p_g ∝ n_g^alpha (multilingual MT / XLM); alpha 0 is balanced sampling
    "temperature_0.5": ("erm", None, {"group_sampling": "temperature", "group_sampling_exponent": 0.5}),
    "temperature_0.3": ("erm", None, {"group_sampling": "temperature", "group_sampling_exponent": 0.3}),
    "balanced_erm": ("erm", None, {"group_sampling": "balanced"}),
    # the sampling of the *_sequence methods with the plain mean: what their weights add beyond exact balance
    "stratified_erm": ("erm", None, {"group_sampling": "stratified"}),
    # its knob: every step holds the shares p_g ∝ n_g^alpha exactly (alpha 0 is stratified_erm; below 0 the minorities
    # get more than an equal share): stratified sampling's own curve of worst language against English, to compare
    # the min-max recipes with at equal English cost
    **{
        f"stratified_erm_{alpha}": ("erm", None, {"group_sampling": "stratified", "group_sampling_exponent": alpha})
        for alpha in (0.3, -0.1, -0.25)
    },
    # the reference group DRO update on per-token losses: eta 0.01, natural sampling
    "minmax_reference": ("minmax", None, {"group_step_size": 0.01}),
    # exponentiated gradient on per-verse losses, every step holding every language, absent-safe, DoReMi's floor
    "minmax_sequence": (
        "minmax",
        None,
        {**STRATIFIED, "group_step_size": 0.001, "group_loss_estimate": "last", "group_weight_floor": 0.1},
    ),
    # smoothed min-max: q = softmax(EMA of per-verse losses / T), the KL-regularised worst case; T is the knob
    **{
        f"ema_sequence_{temperature}": ("ema", None, {**STRATIFIED, "group_temperature": float(temperature)})
        for temperature in (20, 50, 100)
    },
}
# group-conditional training (the EGT paper's baseline): every verse follows its language tag, the tag is not scored
# (training, validation and test score exactly the tokens the other methods score, given the tag). Its control,
# neutral_tag_erm, puts the same tag before every language: any token before the verse already helps a model that
# gets no BOS token, so only the difference between the two is the language information.
# The *_stratified_erm pair asks the same on stratified steps: does the language tag add to what sampling gives?
TAGGED_METHODS = {
    "tag_erm": ("erm", None, {}),
    "neutral_tag_erm": ("erm", None, {}),
    "tag_stratified_erm": ("erm", None, {"group_sampling": "stratified"}),
    "neutral_tag_stratified_erm": ("erm", None, {"group_sampling": "stratified"}),
}
LANGUAGE_METHODS |= TAGGED_METHODS
# One LoRA adapter per language (a reference point, not a competitor): each trained with the same recipe (steps,
# batch, learning rate) on its language's training verses only, kept at its best step on its own language's
# validation verses and tested on its own language's test verses. What a language reaches with a whole adapter to
# itself, with no transfer from the others and no competition for capacity. Four trainings per cell, each written
# as a part (``cells/<stage>/own_adapter/seed<k>.<language>.json``) and assembled into the cell when all are done.
OWN_ADAPTER = "own_adapter"
# HyperLoRA at LoRA's parameter count (quality_bold's hyper_matched) whose adapter of each language is generated from
# that language's own rows: trained on one-language micro-batches (``group_sampling="homogeneous"``: the context of
# every training forward is one language's batch) and evaluated, during training and after, with each language's
# context fixed to its first ``--hyper_context_size`` training verses. Does one shared hypernetwork help the small
# languages when each gets its own generated adapter? The cell also measures whether the adapter depends on its
# context at all (``context_sensitivity``) and what each language loses with another language's context.
HYPER_OWN_CONTEXT = "hyper_own_context"
LANGUAGE_METHODS |= {
    OWN_ADAPTER: ("erm", None, {}),
    HYPER_OWN_CONTEXT: ("erm", {"match_lora_parameters": True}, {"group_sampling": "homogeneous"}),
}
# The paired test-stage comparisons written under the tables (same seed, same test verses): min-max against its two
# controls, and each remaining baseline against the sampling it shares (the tag's language information is the tagged
# pair's difference; the constant prefix alone is the neutral tag against no tag).
PAIRED_COMPARISONS = (
    ("minmax_sequence", "stratified_erm"),
    ("minmax_sequence", "erm"),
    (HYPER_OWN_CONTEXT, "stratified_erm"),
    ("tag_stratified_erm", "neutral_tag_stratified_erm"),
    ("neutral_tag_stratified_erm", "stratified_erm"),
    (OWN_ADAPTER, "stratified_erm"),
)
FAMILIES = {
    "sampling": ("erm", "temperature_0.5", "temperature_0.3", "balanced_erm"),
    "stratified": ("stratified_erm_0.3", "stratified_erm", "stratified_erm_-0.1", "stratified_erm_-0.25"),
    "ema_sequence": ("ema_sequence_20", "ema_sequence_50", "ema_sequence_100"),
}
STAGES = ("screen", "test")
SELECTION_METRIC = "eval_validation_worst_group_sequence_nll"


def language_data(args: argparse.Namespace):
    """``(train, validation, test)`` ``datasets.Dataset``s of the Bible split (``hf_egt.apps.bible``); validation keeps
    the first ``--eval_validation_verses`` verse ids of the split's validation set, in every language."""
    from datasets import Dataset

    from hf_egt.apps.bible import load_bible_splits

    splits = load_bible_splits(
        args.languages,
        majority_verses=args.majority_verses,
        minority_verses=args.minority_verses,
        test_verses=args.test_verses,
        validation_verses=args.validation_verses,
        seed=args.split_seed,
    )
    verses = list(dict.fromkeys(row["verse"] for row in splits["validation"]))[: args.eval_validation_verses]
    kept = set(verses)
    validation = [row for row in splits["validation"] if row["verse"] in kept]
    return tuple(Dataset.from_list(rows) for rows in (splits["train"], validation, splits["test"]))


def language_tag(method: str, language: str) -> str:
    """The prefix of a verse under ``method`` (``TAGGED_METHODS``): its language's tag, or one tag for all."""
    return "<text>" if method.startswith("neutral_tag") else f"<{language}>"


def tagged(dataset, tokenizer, max_length: int, method: str):
    """``dataset`` tokenized as ``tag + verse`` with labels ``-100`` on the tag and the verse's first token
    (``hf_egt.integrations.evaluation.prefixed_batch``): the same scored tokens as the untagged text."""
    from datasets import Dataset

    from hf_egt.integrations.evaluation import prefixed_batch

    rows = []
    for row in dataset:
        prefix = language_tag(method, row["group"])
        inputs, labels = prefixed_batch(tokenizer, [prefix], [row["text"]], max_length)
        rows.append(
            {**{k: v[0].tolist() for k, v in inputs.items()}, "labels": labels[0].tolist(), "group": row["group"]}
        )
    return Dataset.from_list(rows)


def best_validation(cell: Mapping) -> dict[str, float]:
    """Per-language validation NLL per verse at the cell's best step (the step it kept); for a cell of one adapter per
    language (``best_step`` a mapping language -> step), each language's value at its own adapter's best step."""
    best = cell["best_step"]
    steps = best if isinstance(best, Mapping) else None
    found: dict[str, float] = {}
    for row in cell["curve"]:
        per_group = row.get("validation", {}).get("sequence_nll", {}).get("per_group", {})
        if steps is None and row["step"] == best:
            return per_group
        if steps is not None:
            found |= {g: v for g, v in per_group.items() if steps.get(g) == row["step"]}
    if steps is not None and set(found) == set(steps):
        return {g: found[g] for g in steps}
    raise ValueError(f"Cell {cell['method']}/seed{cell['seed']} has no evaluation at its best step {best}.")


def step_label(step) -> str:
    """A cell's best step as a table shows it: the step, or each language's (``en 40 fr 80 ...``)."""
    return " ".join(f"{g} {s}" for g, s in step.items()) if isinstance(step, Mapping) else str(step)


def summarize(cells: Sequence[Mapping], majority: str, source: str) -> dict:
    """Per method: mean ± std over seeds of each language's NLL per verse, the worst language, the worst minority,
    the group mean, and the best step; ``source`` is ``validation`` (at the best step) or ``test``."""
    by_method: dict[str, list[Mapping]] = {}
    for cell in cells:
        by_method.setdefault(cell["method"], []).append(cell)
    summary = {}
    for method, found in by_method.items():
        rows = [
            best_validation(cell) if source == "validation" else cell["result"]["sequence_nll"]["per_group"]
            for cell in found
        ]
        languages = list(rows[0])
        summary[method] = {
            "seeds": [cell["seed"] for cell in found],
            "per_group": {g: mean_std([row[g] for row in rows]) for g in languages},
            "worst": mean_std([max(row.values()) for row in rows]),
            "worst_minority": mean_std([max(v for g, v in row.items() if g != majority) for row in rows]),
            "group_mean": mean_std([statistics.fmean(row.values()) for row in rows]),
            "best_step": [cell["best_step"] for cell in found],
            "train_s": mean_std([cell["train_s"] for cell in found]),
        }
    return summary


def markdown_table(summary: Mapping, base: Mapping | None, majority: str) -> str:
    """One row per method (and the base model): each language's NLL per verse (majority first), the worst minority,
    the group mean (mean ± std over seeds; a single seed shows its value), the best steps and the seeds."""
    found = list(next(iter(summary.values()))["per_group"]) if summary else []
    languages = [majority, *sorted(g for g in found if g != majority)]

    def pm(value: tuple[float, float], seeds: int) -> str:
        return f"{value[0]:.1f} ± {value[1]:.1f}" if seeds > 1 else f"{value[0]:.1f}"

    header = ["method", *languages, "worst minority", "group mean", "best step", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" + " ---: |" * (len(header) - 1)]
    if base is not None:
        per_group = base["per_group"]
        minority = max(v for g, v in per_group.items() if g != majority)
        cells = [f"{per_group[g]:.1f}" for g in languages] + [
            f"{minority:.1f}",
            f"{statistics.fmean(per_group.values()):.1f}",
        ]
        lines.append("| base | " + " | ".join(cells) + " | | |")
    for method, row in summary.items():
        seeds = len(row["seeds"])
        cells = [pm(row["per_group"][g], seeds) for g in languages]
        cells += [pm(row["worst_minority"], seeds), pm(row["group_mean"], seeds)]
        cells += [" / ".join(step_label(step) for step in row["best_step"]), " ".join(map(str, row["seeds"]))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


UNITS = {  # test-stage unit -> (where in an evaluate_causal_lm result, label, decimals)
    "sequence_nll": (("sequence_nll", "per_group"), "NLL per verse (nats)", 1),
    "bits_per_byte": (("bits_per_byte", "per_group"), "bits per UTF-8 byte", 3),
    "perplexity": (("per_group",), "per-token perplexity", 2),
    "egt": (("egt", "per_group"), "EGT divergence of generations (quantized JS, base-LM features)", 3),
}


def unit_values(cell: Mapping, unit: str) -> dict[str, float]:
    """Per-language values of ``unit`` (a ``UNITS`` key) in a test cell's (or the base model's) ``result``."""
    value = cell["result"]
    for key in UNITS[unit][0]:
        value = value[key]
    return value


def unit_table(cells: Sequence[Mapping], base: Mapping | None, majority: str, unit: str) -> str:
    """Test-stage table of one ``unit``: per method (and the base model) each language's value, the worst group and
    the gap (worst - best), mean ± std over seeds (gap and worst computed per seed first)."""
    _, _, decimals = UNITS[unit]
    rows: dict[str, list[dict[str, float]]] = {}
    if base is not None:
        rows["base"] = [unit_values(base, unit)]
    for cell in cells:
        rows.setdefault(cell["method"], []).append(unit_values(cell, unit))
    if not rows:
        return ""
    languages = [majority, *sorted(g for g in next(iter(rows.values()))[0] if g != majority)]

    def pm(values: Sequence[float]) -> str:
        mean, std = mean_std(values)
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if len(values) > 1 else f"{mean:.{decimals}f}"

    lines = [
        "| method | " + " | ".join(languages) + " | worst | gap | seeds |",
        "| --- |" + " ---: |" * (len(languages) + 3),
    ]
    for method, found in rows.items():
        cells_ = [pm([row[g] for row in found]) for g in languages]
        cells_ += [
            pm([max(row.values()) for row in found]),
            pm([max(row.values()) - min(row.values()) for row in found]),
        ]
        lines.append(f"| {method} | " + " | ".join(cells_) + f" | {len(found)} |")
    return "\n".join(lines)


def egt_detail(cells: Sequence[Mapping], base: Mapping | None) -> str:
    """One line per test model (every seed) with its EGT per language and 95 % interval, the noise floor, and the gap
    with its permutation p-value: whether the generation gap is resolved, not only its size."""
    lines = ["| model | language | EGT | 95 % interval | null floor | gap | gap p-value |", "| --- |" + " ---: |" * 6]
    models = ([("base", base)] if base is not None else []) + [
        (f"{cell['method']}/seed{cell['seed']}", cell) for cell in cells
    ]
    for name, model in models:
        report = model["result"].get("egt")
        if report is None:
            continue
        for i, (group, value) in enumerate(sorted(report["per_group"].items())):
            low, high = report["ci"][group]
            gap = " | "
            if i == 0:  # a cell assembled from one model per language has no gap test across them (None)
                gap = " | ".join("n/a" if report.get(k) is None else f"{report[k]:.3f}" for k in ("gap", "gap_p_value"))
            lines.append(
                f"| {name if i == 0 else ''} | {group} | {value:.3f} | [{low:.3f}, {high:.3f}] | "
                f"{report['null_floor'][group]:.3f} | {gap} |"
            )
    return "\n".join(lines)


def paired_differences(cells: Sequence[Mapping], method: str, control: str, unit: str = "sequence_nll") -> dict:
    """Per language, mean ± std over the seeds both ran of ``method`` - ``control`` (same seed, same test verses)."""
    by_key = {(cell["method"], cell["seed"]): unit_values(cell, unit) for cell in cells}
    seeds = sorted(seed for (name, seed) in by_key if name == method and (control, seed) in by_key)
    if not seeds:
        return {}
    languages = list(by_key[(method, seeds[0])])
    return {
        "seeds": seeds,
        "per_group": {
            g: mean_std([by_key[(method, seed)][g] - by_key[(control, seed)][g] for seed in seeds]) for g in languages
        },
    }


def paired_line(name: str, found: Mapping) -> str:
    """One sentence of ``paired_differences``' result: per language, mean ± std over the paired seeds (the mean alone
    for one seed, which has no spread)."""
    spread = len(found["seeds"]) > 1
    values = ", ".join(f"{g} {m:+.2f}" + (f" ± {d:.2f}" if spread else "") for g, (m, d) in found["per_group"].items())
    return f"Paired test NLL per verse, {name} (seeds {found['seeds']}): {values}."


def plot_curves(cells: Sequence[Mapping], majority: str, path: Path) -> Path:
    """Over training: each method's validation NLL per verse of the worst minority and of the majority (one line
    per seed), and each language's weight in the step's loss (logged ``group_weight``): for a plain mean (``erm``,
    ``stratified_erm``) that is the language's share of the step's scored tokens, for min-max its learned weight."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {method: f"C{i}" for i, method in enumerate(dict.fromkeys(cell["method"] for cell in cells))}
    for cell in cells:
        rows = [row for row in cell["curve"] if "validation" in row]
        steps = [row["step"] for row in rows]
        per_group = [row["validation"]["sequence_nll"]["per_group"] for row in rows]
        colour = colours[cell["method"]]
        label = (
            cell["method"] if cell["seed"] == min(c["seed"] for c in cells if c["method"] == cell["method"]) else None
        )
        left.plot(
            steps, [max(v for g, v in r.items() if g != majority) for r in per_group], "-", color=colour, label=label
        )
        left.plot(steps, [r[majority] for r in per_group], ":", color=colour)
        weighted = [row for row in cell["curve"] if "weights" in row]
        if weighted and len({round(w, 6) for row in weighted for w in row["weights"].values()}) > 1:
            for i, group in enumerate(sorted(weighted[0]["weights"])):
                right.plot(
                    [row["step"] for row in weighted],
                    [row["weights"][group] for row in weighted],
                    ["-", "--", ":", "-."][i % 4],
                    color=colour,
                    label=f"{cell['method']} {group}" if label else None,
                )
    left.set_xlabel("step")
    left.set_ylabel("validation NLL per verse (nats)")
    left.set_title(f"worst minority (solid) and {majority} (dotted)", fontsize=10)
    left.legend(fontsize=7)
    right.set_xlabel("step")
    right.set_ylabel("group weight")
    right.set_title("weight of each language in the step's loss (plain mean: its token share)", fontsize=10)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    return save_figure(figure, path, dpi=120)


def plot_frontier(summary: Mapping, base: Mapping | None, majority: str, path: Path, title: str) -> Path:
    """Worst-minority NLL per verse against the majority's, one point per method (error bars: std over seeds), the
    methods of one family joined by a line in knob order."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    for family, members in FAMILIES.items():
        points = [summary[m] for m in members if m in summary]
        if len(points) > 1:
            axis.plot(
                [p["per_group"][majority][0] for p in points],
                [p["worst_minority"][0] for p in points],
                "-",
                color="0.7",
                label=f"{family} ({' → '.join(m for m in members if m in summary)})",
            )
    for i, (method, row) in enumerate(summary.items()):
        (x, dx), (y, dy) = row["per_group"][majority], row["worst_minority"]
        # squares: a tag before every verse (compare with its constant-tag control only); diamond: one adapter per
        # language (a reference point, 4x the parameters and steps)
        marker = "s" if method in TAGGED_METHODS else "D" if method == OWN_ADAPTER else "o"
        axis.errorbar(x, y, xerr=dx if dx == dx else None, yerr=dy if dy == dy else None, fmt=marker, capsize=3)
        # labels alternate above and below their points, so that neighbours on one curve stay readable
        axis.annotate(method, (x, y), textcoords="offset points", xytext=(4, 4 if i % 2 else -11), fontsize=8)
    if base is not None:
        per_group = base["per_group"]
        minority = max(v for g, v in per_group.items() if g != majority)
        axis.annotate(f"base ({per_group[majority]:.0f}, {minority:.0f})", (0.02, 0.02), xycoords="axes fraction")
    axis.set_xlabel(f"{majority} (majority) NLL per verse, nats — lower is better")
    axis.set_ylabel("worst minority language NLL per verse, nats")
    axis.set_title(title, fontsize=10)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below: the corners hold points
    return save_figure(figure, path, dpi=120)


def egt_kwargs(args: argparse.Namespace, tokenizer) -> dict:
    """``evaluate_causal_lm`` arguments of the test stage's EGT: the base SmolLM2's own hidden states (a fresh copy,
    untouched by the adapters) as features, ``--egt_prompts_per_group`` prompts per language; ``{}`` when off."""
    if args.stage != "test" or args.egt_prompts_per_group == 0:
        return {}
    from hf_egt.apps.offline import load_cached_smollm2

    base, _ = load_cached_smollm2()
    return {"feature_model": (base.model, tokenizer), "max_prompts_per_group": args.egt_prompts_per_group}


def evaluate_rows(model, tokenizer, dataset, settings, name: str, **kwargs) -> dict:
    """``evaluate_causal_lm`` of ``dataset``'s texts by group with the study's batch size and length; ``kwargs`` go
    to it (``n_bootstrap``, the EGT's ``feature_model``, ...)."""
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    return evaluate_causal_lm(
        model,
        tokenizer,
        list(dataset["text"]),
        list(dataset["group"]),
        batch_size=settings.per_device_eval_batch_size,
        max_length=settings.max_length,
        name=name,
        **kwargs,
    )


def evaluate_base(model, tokenizer, dataset, settings, name: str, n_bootstrap: int, **kwargs) -> dict:
    started = time.perf_counter()
    result = evaluate_rows(model, tokenizer, dataset, settings, name, n_bootstrap=n_bootstrap, **kwargs)
    return {"result": result, "per_group": result["sequence_nll"]["per_group"], "eval_s": time.perf_counter() - started}


# ------------------------------------------------------------------------------------ one model per language: merging

PER_GROUP_NOTE = (
    "Each language's values come from a separate evaluation (its own adapter, or its own HyperLoRA context): the "
    "per-language values and their intervals are exact; the values across languages (EGT's gap and its permutation "
    "p-value, ratio, pooled overall) need one model's generations of every language and are not computed (None)."
)


def merge_results(parts: Mapping[str, Mapping]) -> dict:
    """One ``evaluate_causal_lm`` result from per-language ones (``parts[language]`` scored that language's rows only),
    of the same shape: per-group perplexity, NLL per token, NLL per verse and bits per byte with their intervals and
    scored counts; gap, worst group and the pooled overall recomputed from the per-group values and counts; the EGT
    report's per-group fields, its across-language fields (gap, p-value, ...) ``None`` (``PER_GROUP_NOTE``)."""
    import math

    from hf_egt.core.metrics.summary import group_run, summarize_groups

    languages = sorted(parts)
    for language in languages:
        if set(parts[language]["per_group"]) != {language}:
            raise ValueError(f"The part of {language!r} scored {sorted(parts[language]['per_group'])}, not it alone.")
    scored = {g: parts[g]["scored"][g] for g in languages}

    def pooled(values: Mapping[str, float], weight: str) -> float:
        total = sum(scored[g][weight] for g in languages)
        return sum(values[g] * scored[g][weight] for g in languages) / total

    loss = {g: parts[g]["loss_per_group"][g] for g in languages}
    overall_loss = pooled(loss, "tokens")
    perplexity = {g: parts[g]["per_group"][g] for g in languages}
    result = {
        **group_run(perplexity, {g: parts[g]["counts"][g] for g in languages}, math.exp(overall_loss)),
        "loss_per_group": loss,
        "overall_loss": overall_loss,
    }
    for unit, weight in (("sequence_nll", "examples"), ("bits_per_byte", "bytes")):
        if not all(unit in parts[g] for g in languages):
            continue
        values = {g: parts[g][unit]["per_group"][g] for g in languages}
        result[unit] = {**summarize_groups(values), "overall": pooled(values, weight)}
        if all("ci" in parts[g][unit] for g in languages):
            result[unit]["ci"] = {g: parts[g][unit]["ci"][g] for g in languages}
    result["scored"] = scored
    if all("egt" in parts[g] for g in languages):
        reports = {g: parts[g]["egt"] for g in languages}
        egt = {}
        for key, value in reports[languages[0]].items():
            if key in ACROSS_GROUPS:
                continue
            if isinstance(value, Mapping) and set(value) <= {languages[0]} and key != "estimator_kwargs":
                egt[key] = {g: reports[g][key][g] for g in languages if g in reports[g][key]}
            elif all(reports[g].get(key) == value for g in languages):
                egt[key] = value  # a setting shared by every part (divergence, resamples, ...)
            else:
                egt[key] = {g: reports[g].get(key) for g in languages}  # a setting that differs (e.g. clusters)
        result["egt"] = {**egt, **dict.fromkeys(ACROSS_GROUPS), "note": PER_GROUP_NOTE}
        result["samples"] = {g: parts[g].get("samples", {}).get(g, []) for g in languages}
    return result


ACROSS_GROUPS = (
    "gap",
    "gap_p_value",
    "gap_significant",
    "ratio",
    "worst_group",
    "best_group",
    "overall",
    "ego_gap",
    "mgo_gap",
    "generated_share",
    "data_share",
)


def part_path(output_dir: Path, stage: str, seed: int, language: str) -> Path:
    """One language's part of an ``own_adapter`` cell: ``cells/<stage>/own_adapter/seed<k>.<language>.json``."""
    return cell_path(output_dir, stage, OWN_ADAPTER, seed).with_name(f"seed{seed}.{language}.json")


def merge_curves(curves: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """Per step that every language evaluated: one curve row holding each language's validation values (perplexity
    and NLL per verse) from its own curve, as the rows of a cell of one model."""
    by_step: dict[int, dict[str, Mapping]] = {}
    for language, curve in curves.items():
        for row in curve or []:
            if "validation" in row:
                by_step.setdefault(row["step"], {})[language] = row["validation"]
    rows = []
    for step in sorted(by_step):
        found = by_step[step]
        if set(found) != set(curves):
            continue
        per_group = {g: found[g]["per_group"][g] for g in curves}
        sequence = {g: found[g]["sequence_nll"]["per_group"][g] for g in curves}
        validation = {
            "per_group": per_group,
            "worst": max(per_group.values()),
            "sequence_nll": {"per_group": sequence, "worst": max(sequence.values())},
        }
        rows.append({"step": step, "validation": validation})
    return rows


def assemble_own_adapter(parts: Mapping[str, Mapping], stage: str) -> dict:
    """The ``own_adapter`` cell from its per-language parts (``run_cell`` cells of one language each): the curves
    merged by step, each language's best step, the test results merged (``merge_results``), ``train_s`` summed."""
    first = next(iter(parts.values()))
    results = {g: part["result"] for g, part in parts.items()}
    return {
        "method": OWN_ADAPTER,
        "seed": first["seed"],
        "stage": stage,
        "languages": list(parts),
        "objective": first["objective"],
        "hyper": False,
        "learning_rate": first["learning_rate"],
        "trainable_parameters": {g: part["trainable_parameters"] for g, part in parts.items()},
        "best_step": {g: part["best_step"] for g, part in parts.items()},
        "curve": merge_curves({g: part["curve"] for g, part in parts.items()}),
        "result": merge_results(results) if all(r is not None for r in results.values()) else None,
        "train_loss": {g: part["train_loss"] for g, part in parts.items()},
        "train_s": sum(part["train_s"] for part in parts.values()),
        "eval_s": sum(part["eval_s"] for part in parts.values()),
        "note": "One adapter per language, each trained on its language only. " + PER_GROUP_NOTE,
    }


def own_adapter_cell(output_dir: Path, stage: str, seed: int, languages: Sequence[str]) -> dict | None:
    """The assembled ``own_adapter`` cell of ``seed`` when every language's part is written, else ``None``."""
    parts = {language: read_json(part_path(output_dir, stage, seed, language)) for language in languages}
    if any(part is None for part in parts.values()):
        return None
    return assemble_own_adapter(parts, stage)


def rows_of(dataset, language: str):
    """The rows of ``dataset`` whose group is ``language``."""
    return dataset.select([i for i, group in enumerate(dataset["group"]) if group == language])


def cell_options(args: argparse.Namespace, test_kwargs: Mapping) -> dict:
    """The ``run_cell`` options every cell of the study shares: validation every ``--eval_steps`` steps, each method
    kept at its best validation worst-language NLL per verse, the test split measured once at the end."""
    return {
        "eval_steps": args.eval_steps,
        "specs": LANGUAGE_METHODS,
        "selection_metric": SELECTION_METRIC,
        "test_in_curve": False,
        "n_bootstrap": args.n_bootstrap,
        "store_reference": False,
        "test_kwargs": test_kwargs,
    }


def run_own_adapter(model, tokenizer, train, validation, test, settings, seed: int, args, test_kwargs) -> dict | None:
    """Train (and write) each missing language part of the ``own_adapter`` cell of ``seed``, then return the
    assembled cell once all parts exist (``None`` while another process still runs one)."""
    output_dir = Path(args.output_dir)
    for language in args.languages:
        path = part_path(output_dir, args.stage, seed, language)
        if (args.resume and path.is_file()) or not claim(path):
            continue
        part = run_cell(
            model,
            tokenizer,
            rows_of(train, language),
            rows_of(test, language) if args.stage == "test" else None,
            settings,
            f"languages/{language}",
            OWN_ADAPTER,
            seed,
            output_dir / "work",
            validation=rows_of(validation, language),
            **cell_options(args, test_kwargs),
        )
        write_json(path, {**part, "stage": args.stage, "language": language})
        release(path)
        logger.info("%s/seed%d/%s: best step %s", OWN_ADAPTER, seed, language, part["best_step"])
    return own_adapter_cell(output_dir, args.stage, seed, args.languages)


# ------------------------------------------------------------------------------ HyperLoRA with each language's context


class OwnContextEvaluation:
    """Mixin for ``EGTTrainer`` over a HyperLoRA model: every evaluation scores each group's rows with the context
    fixed to *that group's* context set (``context_sets[group]``, ``fix_context``), and reports the merged per-group
    sums under the keys of the usual per-group evaluation (``<prefix>_group_sequence_nll/<g>``,
    ``<prefix>_worst_group_sequence_nll``, ...): best-step selection and ``training_curve`` read it unchanged.

    The groups' rows are disjoint, so the per-group sums of the separate passes add up to those of one pass; the
    ``<prefix>_loss`` is the row-weighted mean of the passes' losses."""

    context_sets: Mapping[str, Mapping]

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        from transformers.trainer_utils import EvalLoopOutput

        from hf_egt.core.metrics.likelihood import group_likelihood
        from hf_egt.integrations.hyper import fix_context
        from hf_egt.integrations.trainer.egt_trainer import eval_metrics_from_likelihood

        dataset = dataloader.dataset
        labels = list(dataset[self.args.group_column])
        unknown = sorted(set(map(str, labels)) - set(self.context_sets))
        if unknown:
            raise ValueError(f"No context set for the group(s) {unknown} of the evaluated rows.")
        totals, rows, loss = None, 0, 0.0
        for group, context_set in self.context_sets.items():
            selected = [i for i, label in enumerate(labels) if str(label) == group]
            if not selected:
                continue
            fix_context(self.model, context_set)
            output = super().evaluation_loop(
                self.get_eval_dataloader(dataset.select(selected)),
                description,
                prediction_loss_only,
                ignore_keys,
                metric_key_prefix,
            )
            part = self._last_eval_group_sums
            totals = part if totals is None else tuple(a + b for a, b in zip(totals, part))
            rows += output.num_samples
            loss += output.metrics.get(f"{metric_key_prefix}_loss", float("nan")) * output.num_samples
        sums, tokens, sequences = totals
        self._last_eval_group_sums = totals
        likelihood = group_likelihood(sums, tokens, self.group_objective.groups, group_sequences=sequences)
        self.group_evaluations[metric_key_prefix] = likelihood
        metrics = {
            f"{metric_key_prefix}_loss": loss / rows,
            **eval_metrics_from_likelihood(likelihood, metric_key_prefix),
        }
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=rows)


def own_context_trainer(context_sets: Mapping[str, Mapping]):
    """A factory of ``EGTTrainer``s with ``OwnContextEvaluation`` (``train_adapter``'s ``trainer_class``)."""
    from hf_egt.integrations.trainer import EGTTrainer

    class OwnContextTrainer(OwnContextEvaluation, EGTTrainer):
        pass

    def build(*args, **kwargs):
        trainer = OwnContextTrainer(*args, **kwargs)
        trainer.context_sets = dict(context_sets)
        return trainer

    return build


def own_context_sets(train, tokenizer, languages: Sequence[str], size: int, max_length: int) -> dict[str, dict]:
    """Each language's context set: its first ``size`` training verses, tokenized (``tokenize_context_set``)."""
    from hf_egt.integrations.hyper import tokenize_context_set

    return {g: tokenize_context_set(tokenizer, rows_of(train, g)["text"][:size], max_length) for g in languages}


def evaluate_with_contexts(model, tokenizer, dataset, contexts: Mapping[str, Mapping], settings, name, **kwargs):
    """``evaluate_causal_lm`` of each language's rows of ``dataset`` with the HyperLoRA context fixed to
    ``contexts[language]``, merged into one result (``merge_results``); ``kwargs`` go to ``evaluate_causal_lm``."""
    from hf_egt.integrations.hyper import fix_context

    parts = {}
    for language, context_set in contexts.items():
        fix_context(model, context_set)
        parts[language] = evaluate_rows(
            model, tokenizer, rows_of(dataset, language), settings, f"{name}/{language}", **kwargs
        )
    return merge_results(parts)


def swap_donors(languages: Sequence[str]) -> dict[str, str]:
    """The language whose context each language gets in the swapped-context control: the majority's (the first) for
    every minority, the last minority's (German by default) for the majority."""
    majority, *minorities = languages
    return {majority: minorities[-1], **dict.fromkeys(minorities, majority)}


def swapped_context_control(model, tokenizer, validation, contexts: Mapping[str, Mapping], settings) -> dict:
    """Validation NLL per verse of each language with its own context and with another language's (``swap_donors``;
    the languages are ``contexts``' keys, the majority first): if the generated adapters depend on their context, a
    language should lose with another's."""
    donors = swap_donors(list(contexts))
    own = evaluate_with_contexts(model, tokenizer, validation, contexts, settings, "own context")
    swapped_contexts = {g: contexts[donor] for g, donor in donors.items()}
    swapped = evaluate_with_contexts(model, tokenizer, validation, swapped_contexts, settings, "swapped context")
    own, swapped = own["sequence_nll"]["per_group"], swapped["sequence_nll"]["per_group"]
    return {
        "donor": donors,
        "own": own,
        "swapped": swapped,
        "difference": {g: swapped[g] - own[g] for g in own},
    }


def context_sensitivities(model, train, tokenizer, contexts: Mapping[str, Mapping], size: int, max_length: int) -> dict:
    """``context_sensitivity`` (``hf_egt.integrations.hyper.ple``: across-set variance of the generated LoRA weights
    over their mean squared norm; 0 for a hypernetwork that ignores its input) of the weights generated from the
    languages' context sets, and, as the floor that sampling alone gives, from as many disjoint sets of ``size``
    verses of the majority (the first language; ``None`` when it has too few)."""
    import torch

    hyper = model.base_model if hasattr(model, "peft_config") and hasattr(model, "base_model") else model
    device = next(hyper.hypernetwork.parameters()).device

    def sensitivity(sets):
        batches = [{k: v.to(device) for k, v in batch.items()} for batch in sets]
        was_training = hyper.training
        hyper.eval()
        try:
            with torch.no_grad():
                return float(hyper.context_sensitivity(batches))
        finally:
            hyper.train(was_training)

    from hf_egt.integrations.hyper import tokenize_context_set

    majority = next(iter(contexts))
    texts = rows_of(train, majority)["text"]
    count = len(contexts)
    within = None
    if len(texts) >= count * size:
        within = sensitivity(
            [tokenize_context_set(tokenizer, texts[i * size : (i + 1) * size], max_length) for i in range(count)]
        )
    return {"across_languages": sensitivity(contexts.values()), "within_majority": within}


def run_own_context_cell(model, tokenizer, train, validation, test, settings, seed: int, args, test_kwargs) -> dict:
    """Train the ``hyper_own_context`` cell of ``seed`` (see ``HYPER_OWN_CONTEXT``); return the cell, with
    ``context_sensitivity`` and the ``swapped_context`` control."""
    import shutil

    from benchmarks.quality_bold import _best_step, training_curve
    from hf_egt.apps.recipe import lora_config, train_adapter

    objective, hyper_fields, overrides = LANGUAGE_METHODS[HYPER_OWN_CONTEXT]
    contexts = own_context_sets(train, tokenizer, args.languages, args.hyper_context_size, settings.max_length)
    seeded = replace(settings, seed=seed)
    output_dir = Path(args.output_dir) / "work" / "trainer" / "languages" / HYPER_OWN_CONTEXT / f"seed{seed}"
    started = time.perf_counter()
    trainer = train_adapter(
        model,
        tokenizer,
        train,
        seeded,
        objective=objective,
        output_dir=output_dir,
        peft_config=lora_config(model, seeded, hyper=True, **hyper_fields),
        trainer_class=own_context_trainer(contexts),
        eval_dataset={"validation": validation},
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=SELECTION_METRIC,
        **overrides,
    )
    train_s = time.perf_counter() - started
    result = None
    if test is not None:
        name = f"languages/{HYPER_OWN_CONTEXT}/seed{seed}"
        result = evaluate_with_contexts(
            trainer.model, tokenizer, test, contexts, settings, name, n_bootstrap=args.n_bootstrap, **test_kwargs
        )
    swapped = swapped_context_control(trainer.model, tokenizer, validation, contexts, settings)
    sensitivity = context_sensitivities(
        trainer.model, train, tokenizer, contexts, args.hyper_context_size, settings.max_length
    )
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    cell = {
        "domain": "languages",
        "method": HYPER_OWN_CONTEXT,
        "seed": seed,
        "objective": objective,
        "hyper": True,
        "hyper_fields": hyper_fields,
        "overrides": overrides,
        "hyper_context_size": args.hyper_context_size,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "learning_rate": seeded.learning_rate,
        "result": result,
        "best_step": _best_step(trainer.state),
        "curve": training_curve(trainer.state.log_history),
        "context_sensitivity": sensitivity,
        "swapped_context": swapped,
        "train_loss": losses[-1] if losses else None,
        "train_s": train_s,
        "eval_s": time.perf_counter() - started - train_s,
    }
    shutil.rmtree(output_dir, ignore_errors=True)  # the checkpoints were only there to reload the best one
    return cell


def context_control_table(cells: Sequence[Mapping], majority: str) -> str:
    """One row per ``hyper_own_context`` cell (seed): the context sensitivity across the languages' context sets and
    within the majority, then per language (majority first) the validation NLL per verse with its own context, with
    the donor's (``swap_donors``) and the difference: ``own → swapped (donor, swapped - own)``."""
    found = [cell for cell in cells if "swapped_context" in cell]
    if not found:
        return ""
    languages = [majority, *sorted(g for g in found[0]["swapped_context"]["own"] if g != majority)]
    header = ["seed", "sensitivity across languages", "within majority", *languages]
    lines = ["| " + " | ".join(header) + " |", "| ---: |" + " ---: |" * (len(header) - 1)]
    for cell in found:
        sensitivity, control = cell["context_sensitivity"], cell["swapped_context"]
        within = sensitivity["within_majority"]
        values = [
            f"{control['own'][g]:.1f} → {control['swapped'][g]:.1f} ({control['donor'][g]}, "
            f"{control['difference'][g]:+.2f})"
            for g in languages
        ]
        row = [
            str(cell["seed"]),
            f"{sensitivity['across_languages']:.2e}",
            "n/a" if within is None else f"{within:.2e}",
        ]
        lines.append("| " + " | ".join(row + values) + " |")
    return "\n".join(lines)


def run_languages(args: argparse.Namespace, command: str) -> dict:
    """Run every missing cell of ``args.stage``, then write the results of every finished cell; return them."""
    from tqdm.auto import tqdm

    from hf_egt.apps.offline import load_cached_smollm2
    from hf_egt.core.groups import label_counts

    unknown = sorted(set(args.methods) - set(LANGUAGE_METHODS))
    if unknown:
        raise ValueError(f"`--methods` has unknown entries {unknown}; valid: {list(LANGUAGE_METHODS)}.")
    output_dir = Path(args.output_dir)
    settings = settings_from_args(args)
    train, validation, test = language_data(args)  # before the model: a bad language or size fails here
    todo = [  # seed by seed: each finished seed is a whole comparison
        (method, seed)
        for seed in args.seeds
        for method in args.methods
        if not (args.resume and cell_path(output_dir, args.stage, method, seed).is_file())
    ]
    base_file = base_path(output_dir, args.stage)
    started = time.perf_counter()
    if todo or not base_file.is_file():
        model, tokenizer = load_cached_smollm2()
        test_kwargs = egt_kwargs(args, tokenizer)
        if not base_file.is_file() and claim(base_file):
            dataset = validation if args.stage == "screen" else test
            base = evaluate_base(
                model, tokenizer, dataset, settings, f"base/{args.stage}", args.n_bootstrap, **test_kwargs
            )
            base |= {"train_counts": label_counts(train["group"]), "eval_counts": label_counts(dataset["group"])}
            write_json(base_file, base)
            release(base_file)
        for method, seed in tqdm(todo, desc="cells"):
            path = cell_path(output_dir, args.stage, method, seed)
            if method == OWN_ADAPTER:  # resumable per language: its parts are claimed one by one
                cell = run_own_adapter(model, tokenizer, train, validation, test, settings, seed, args, test_kwargs)
                if cell is not None and not (args.resume and path.is_file()) and claim(path):
                    write_json(path, cell)
                    release(path)
                    logger.info("%s/seed%d: validation %s", method, seed, best_validation(cell))
                continue
            if (args.resume and path.is_file()) or not claim(path):
                continue  # finished or running in another process since the list was made
            if method == HYPER_OWN_CONTEXT:
                stage_test = test if args.stage == "test" else None
                cell = run_own_context_cell(
                    model, tokenizer, train, validation, stage_test, settings, seed, args, test_kwargs
                )
                cell["stage"] = args.stage
                write_json(path, cell)
                release(path)
                control = cell["swapped_context"]["difference"]
                logger.info(
                    "%s/seed%d: best step %s, swapped - own context %s", method, seed, cell["best_step"], control
                )
                continue
            conditional = method in TAGGED_METHODS
            cell = run_cell(
                model,
                tokenizer,
                tagged(train, tokenizer, settings.max_length, method) if conditional else train,
                test if args.stage == "test" else None,
                settings,
                "languages",
                method,
                seed,
                output_dir / "work",
                validation=tagged(validation, tokenizer, settings.max_length, method) if conditional else validation,
                test_prefixes=[language_tag(method, group) for group in test["group"]] if conditional else None,
                **cell_options(args, test_kwargs),
            )
            cell["stage"] = args.stage
            write_json(path, cell)
            release(path)
            logger.info(
                "%s/seed%d: best step %s, validation %s", method, seed, cell["best_step"], best_validation(cell)
            )
    return write_results(output_dir, args, command, time.perf_counter() - started, asdict(settings))


def stage_cells(output_dir: Path, stage: str) -> list[dict]:
    """The finished cells of ``stage``, in ``LANGUAGE_METHODS`` order. The screen also counts the test cells of the
    (method, seed) pairs it has no cell of: a test cell trains exactly as a screen cell and keeps the same validation
    curve, so its best validation step is a screen result too (no retraining to compare with it on validation)."""

    def finished(stage_: str) -> list[dict]:
        return [
            cell
            for method in LANGUAGE_METHODS
            for path in sorted((output_dir / "cells" / stage_ / method).glob("seed*.json"))
            if re.fullmatch(r"seed\d+\.json", path.name)  # not own_adapter's parts (seed<k>.<language>.json)
            and (cell := read_json(path)) is not None
        ]

    cells = finished(stage)
    if stage == "screen":
        screened = {(cell["method"], cell["seed"]) for cell in cells}
        cells += [cell for cell in finished("test") if (cell["method"], cell["seed"]) not in screened]
        cells.sort(key=lambda cell: (list(LANGUAGE_METHODS).index(cell["method"]), cell["seed"]))
    return cells


def write_results(output_dir: Path, args: argparse.Namespace, command: str, wall_s: float, settings: dict) -> dict:
    majority = args.languages[0]
    payload = {"command": command, "settings": settings, "args": vars(args), "wall_s_this_invocation": wall_s}
    parts = ["# Languages as groups: NLL per verse on the parallel Bible", "", "```bash", command, "```", ""]
    for stage in STAGES:
        cells = stage_cells(output_dir, stage)
        if not cells:
            continue
        base = read_json(base_path(output_dir, stage))
        source = "validation" if stage == "screen" else "test"
        summary = summarize(cells, majority, source)
        payload[stage] = {"summary": summary, "base": base, "cells": cells}
        parts += [f"## {stage}: {source} NLL per verse (nats), each method at its own best validation step", ""]
        if base is not None:
            parts += [f"Training verses per language: {base['train_counts']}; {source}: {base['eval_counts']}.", ""]
        parts += [markdown_table(summary, base, majority), ""]
        figure = plot_frontier(
            summary,
            base,
            majority,
            output_dir / f"languages_frontier_{stage}.png",
            f"{stage} ({source}); squares: a tag before each verse, diamond: one adapter per language",
        )
        parts += [f"![worst minority vs {majority}]({figure.name})", ""]
        curves = plot_curves(cells, majority, output_dir / f"languages_curves_{stage}.png")
        parts += [f"![validation curves and group weights]({curves.name})", ""]
        control = context_control_table(cells, majority)
        if control:
            payload[stage]["context_control"] = [
                {k: cell[k] for k in ("seed", "context_sensitivity", "swapped_context")}
                for cell in cells
                if "swapped_context" in cell
            ]
            parts += [
                f"### {HYPER_OWN_CONTEXT}: does the generated adapter depend on its context?",
                "",
                "Context sensitivity of the generated LoRA weights (0: the hypernetwork ignores its input) across the "
                "languages' context sets and across as many disjoint sets of the majority's verses; validation NLL "
                "per verse of each language with its own context → with another language's (whose).",
                "",
                control,
                "",
            ]
        if stage == "test":
            for unit in ("bits_per_byte", "perplexity"):
                parts += [f"### test: {UNITS[unit][1]}", "", unit_table(cells, base, majority, unit), ""]
            differences = {
                f"{method} - {control}": found
                for method, control in PAIRED_COMPARISONS
                if (found := paired_differences(cells, method, control))
            }
            payload[stage]["paired_differences"] = differences
            parts += [line for name, found in differences.items() for line in (paired_line(name, found), "")]
            egt_cells = [cell for cell in cells if "egt" in cell["result"]]
            if any("note" in cell["result"].get("egt", {}) for cell in egt_cells):
                parts += [f"EGT of the {OWN_ADAPTER} and {HYPER_OWN_CONTEXT} rows: {PER_GROUP_NOTE}", ""]
            egt_base = base if base is not None and "egt" in base["result"] else None
            if egt_cells or egt_base is not None:
                parts += [f"### test: {UNITS['egt'][1]}", "", unit_table(egt_cells, egt_base, majority, "egt"), ""]
                parts += [egt_detail(egt_cells, egt_base), ""]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (output_dir / "results.md").write_text("\n".join(parts), encoding="utf-8")
    payload["paths"] = {"md": str(output_dir / "results.md"), "json": str(output_dir / "results.json")}
    return payload


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from hf_egt.apps.bible import DEFAULT_LANGUAGES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/languages", help="Where cells and tables go.")
    parser.add_argument("--resume", action="store_true", help="Skip the cells whose JSON file already exists.")
    parser.add_argument("--stage", choices=STAGES, default="screen", help="screen: validation only; test: also test.")
    parser.add_argument("--methods", nargs="+", default=["erm", "balanced_erm", "minmax_reference"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES), help="The majority first.")
    parser.add_argument("--majority_verses", type=int, default=6000)
    parser.add_argument("--minority_verses", type=int, default=400)
    parser.add_argument("--test_verses", type=int, default=1000)
    parser.add_argument("--validation_verses", type=int, default=300, help="Validation verse ids of the split.")
    parser.add_argument(
        "--eval_validation_verses", type=int, default=100, help="Of which evaluated during training (per language)."
    )
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--eval_steps", type=int, default=40)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_length", type=int, default=80, help="Tokens; verses of <= 160 bytes fit whole.")
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument(
        "--hyper_context_size",
        type=int,
        default=64,
        help=f"{HYPER_OWN_CONTEXT}: each language's context set is its first N training verses.",
    )
    parser.add_argument("--n_bootstrap", type=int, default=1000, help="Bootstrap resamples of the test intervals.")
    parser.add_argument(
        "--egt_prompts_per_group",
        type=int,
        default=250,
        help="Test stage: test verses per language whose continuations the EGT compares with the real verses (0: off).",
    )
    parser.add_argument("--log_level", default="INFO")
    args = parser.parse_args(argv)
    for name in (
        "max_steps",
        "eval_steps",
        "per_device_train_batch_size",
        "eval_validation_verses",
        "hyper_context_size",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.egt_prompts_per_group < 0 or args.egt_prompts_per_group > args.test_verses:
        parser.error(f"--egt_prompts_per_group must be in [0, --test_verses={args.test_verses}].")
    return args


def settings_from_args(args: argparse.Namespace):
    from hf_egt.apps.recipe import DEFAULT

    return replace(
        DEFAULT,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        feature_model=None,
        seed=args.split_seed,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = (
        "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/quality_languages.py"
    )
    command += "".join(f" {shlex.quote(str(arg))}" for arg in argv)
    return run_languages(args, command)


if __name__ == "__main__":
    results = main()
    print(Path(results["paths"]["md"]).read_text(encoding="utf-8"))
