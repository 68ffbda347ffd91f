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

Outputs in ``--output_dir``: ``cells/<stage>/<method>/seed<k>.json`` (``--resume`` skips the cells whose file exists;
a killed run loses at most the cell in progress; several processes started with the same command share the cells,
each claiming one with a ``.lock`` file before running it), ``cells/<stage>/base.json``, ``results.json``,
``results.md``, ``languages_frontier_<stage>.png`` (each method's worst-language NLL per verse against English's: the
cost of helping the small languages, compared at equal majority cost) and ``languages_curves_<stage>.png`` (validation
curves and group weights over training).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/quality_languages.py \\
        --output_dir outputs/languages --resume --stage screen --seeds 0 --methods erm balanced_erm minmax_reference

Development languages: en (majority), fr, es, de. Other languages (``--languages en it ru ro``...) are for confirming
a choice: do not tune on them.
"""

from __future__ import annotations

import argparse
import json
import logging
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
TAGGED_METHODS = {"tag_erm": ("erm", None, {}), "neutral_tag_erm": ("erm", None, {})}
LANGUAGE_METHODS |= TAGGED_METHODS
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
    return "<text>" if method == "neutral_tag_erm" else f"<{language}>"


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
    """Per-language validation NLL per verse at the cell's best step (the step it kept)."""
    for row in cell["curve"]:
        if row["step"] == cell["best_step"]:
            return row["validation"]["sequence_nll"]["per_group"]
    raise ValueError(
        f"Cell {cell['method']}/seed{cell['seed']} has no evaluation at its best step {cell['best_step']}."
    )


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
        cells += [" / ".join(str(step) for step in row["best_step"]), " ".join(map(str, row["seeds"]))]
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
            gap = f"{report['gap']:.3f} | {report['gap_p_value']:.3f}" if i == 0 else " | "
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
    for method, row in summary.items():
        (x, dx), (y, dy) = row["per_group"][majority], row["worst_minority"]
        axis.errorbar(x, y, xerr=dx if dx == dx else None, yerr=dy if dy == dy else None, fmt="o", capsize=3)
        axis.annotate(method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if base is not None:
        per_group = base["per_group"]
        minority = max(v for g, v in per_group.items() if g != majority)
        axis.annotate(f"base ({per_group[majority]:.0f}, {minority:.0f})", (0.02, 0.02), xycoords="axes fraction")
    axis.set_xlabel(f"{majority} (majority) NLL per verse, nats — lower is better")
    axis.set_ylabel("worst minority language NLL per verse, nats")
    axis.set_title(title, fontsize=10)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper right")
    return save_figure(figure, path, dpi=120)


def egt_kwargs(args: argparse.Namespace, tokenizer) -> dict:
    """``evaluate_causal_lm`` arguments of the test stage's EGT: the base SmolLM2's own hidden states (a fresh copy,
    untouched by the adapters) as features, ``--egt_prompts_per_group`` prompts per language; ``{}`` when off."""
    if args.stage != "test" or args.egt_prompts_per_group == 0:
        return {}
    from hf_egt.apps.offline import load_cached_smollm2

    base, _ = load_cached_smollm2()
    return {"feature_model": (base.model, tokenizer), "max_prompts_per_group": args.egt_prompts_per_group}


def evaluate_base(model, tokenizer, dataset, settings, name: str, n_bootstrap: int, **kwargs) -> dict:
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    started = time.perf_counter()
    result = evaluate_causal_lm(
        model,
        tokenizer,
        list(dataset["text"]),
        list(dataset["group"]),
        batch_size=settings.per_device_eval_batch_size,
        max_length=settings.max_length,
        name=name,
        n_bootstrap=n_bootstrap,
        **kwargs,
    )
    return {"result": result, "per_group": result["sequence_nll"]["per_group"], "eval_s": time.perf_counter() - started}


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
            if (args.resume and path.is_file()) or not claim(path):
                continue  # finished or running in another process since the list was made
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
                eval_steps=args.eval_steps,
                specs=LANGUAGE_METHODS,
                selection_metric=SELECTION_METRIC,
                test_in_curve=False,
                n_bootstrap=args.n_bootstrap,
                store_reference=False,
                test_kwargs=test_kwargs,
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
            if (cell := read_json(path)) is not None
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
            summary, base, majority, output_dir / f"languages_frontier_{stage}.png", f"{stage} ({source})"
        )
        parts += [f"![worst minority vs {majority}]({figure.name})", ""]
        curves = plot_curves(cells, majority, output_dir / f"languages_curves_{stage}.png")
        parts += [f"![validation curves and group weights]({curves.name})", ""]
        if stage == "test":
            for unit in ("bits_per_byte", "perplexity"):
                parts += [f"### test: {UNITS[unit][1]}", "", unit_table(cells, base, majority, unit), ""]
            differences = {
                f"{method} - {control}": found
                for method, control in (("minmax_sequence", "stratified_erm"), ("minmax_sequence", "erm"))
                if (found := paired_differences(cells, method, control))
            }
            payload[stage]["paired_differences"] = differences
            for name, found in differences.items():
                values = ", ".join(f"{g} {m:+.2f} ± {d:.2f}" for g, (m, d) in found["per_group"].items())
                parts += [f"Paired test NLL per verse, {name} (seeds {found['seeds']}): {values}.", ""]
            egt_cells = [cell for cell in cells if "egt" in cell["result"]]
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
    parser.add_argument("--n_bootstrap", type=int, default=1000, help="Bootstrap resamples of the test intervals.")
    parser.add_argument(
        "--egt_prompts_per_group",
        type=int,
        default=250,
        help="Test stage: test verses per language whose continuations the EGT compares with the real verses (0: off).",
    )
    parser.add_argument("--log_level", default="INFO")
    args = parser.parse_args(argv)
    for name in ("max_steps", "eval_steps", "per_device_train_batch_size", "eval_validation_verses"):
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
