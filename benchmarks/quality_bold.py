"""Paper-style quality table on BOLD: per-group perplexity of SmolLM2-135M after ERM, reweight, min-max and
hypernetwork (HyperLoRA) fine-tuning, over several seeds, on sentences about held-out people.

For each domain (BOLD axis) the records are split by person once (``--split_seed``), so every method and seed is
measured on the same held-out people; the base model is measured once; then each (method, seed) cell trains an adapter
with the demo's recipe ``hf_egt.apps.recipe.train_adapter`` (the seed sets the adapter's initialisation and the data
order) and measures per-group perplexity with ``hf_egt.integrations.evaluation.evaluate_causal_lm``. The held-out domain
(``--held_out_domain``) runs last and is reported in its own section: it is not looked at while choosing settings.

Outputs in ``--output_dir``: ``cells/<domain>/<method>/seed<k>.json`` (one per cell; ``--resume`` skips cells whose
file exists), ``cells/<domain>/base.json``, ``results.json`` (all cells plus the mean ± std summary), ``results.md``
(the tables) and ``quality_bold.png`` (per-group perplexity per method with error bars, one panel per domain).

With ``--validation_fraction`` and ``--eval_steps``, a share of the *training* people becomes a validation split; both
splits are evaluated every ``--eval_steps`` steps and each cell keeps the adapter of its lowest validation worst-group
perplexity (each method at its own best step, the held-out people never used to choose), and stores its curve
(validation and test per-group perplexity, group weights, effective number of groups ``1 / sum q^2``). The
``results.md`` then lists the best steps, and ``quality_bold_curves.png`` plots worst-group perplexity against steps
and the group weights. The ``dro_*`` and ``balanced_erm`` methods are the robust min-max variants of issue #14
(``METHOD_SPECS``); ``dro_heldout`` needs the validation split and ``dro_excess`` the ``erm`` cell of the same seed.
``hyper_matched`` is HyperLoRA at LoRA's trainable-parameter count (``match_lora_parameters``); every HyperLoRA
evaluation, during training too, uses the context of the whole training set (``FixedContextCallback``).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/quality_bold.py \\
        --output_dir outputs/screen --resume --domains race --held_out_domain '' --seeds 0 \\
        --methods erm dro_heldout dro_stratified dro_excess balanced_erm dro_reference \\
        --max_steps 200 --eval_steps 40 --validation_fraction 0.25

Not named ``bench_*.py``: the one-command aggregator runs those, and this run takes about 45 minutes on one CPU
thread (36 cells of about 70 s).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD \\
        python benchmarks/quality_bold.py --output_dir outputs/quality_bold --resume
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.cells import base_path, cell_path, mean_std, read_json, write_json
from hf_egt.core.metrics.plot import pyplot, save_figure

logger = logging.getLogger("quality_bold")

# method -> (EGTTrainer objective, HyperLoRAConfig fields of a HyperLoRA adapter or None for LoRA, further EGTConfig
# fields). The `dro_*` variants are the group-robust recipes of issue #14 (see hf_egt.core.objective and
# hf_egt.core.samplers for where each option comes from).
ROBUST = {"group_sampling": "stratified", "group_loss_estimate": "last", "group_weight_floor": 0.1}
METHOD_SPECS = {
    "erm": ("erm", None, {}),
    "reweight": ("reweight", None, {}),
    "minmax": ("minmax", None, {}),
    "hyper": ("erm", {}, {}),
    # HyperLoRA at LoRA's trainable-parameter count (head_rank chosen so the hypernetwork is no larger)
    "hyper_matched": ("erm", {"match_lora_parameters": True}, {}),
    # balanced ERM: group_DRO's --reweight_groups sampler with the plain mean
    "balanced_erm": ("erm", None, {"group_sampling": "balanced"}),
    # the reference group DRO: balanced sampler, eta 0.01, batch losses
    "dro_reference": ("minmax", None, {"group_sampling": "balanced", "group_step_size": 0.01}),
    # every step holds every group, absent-safe estimates, DoReMi's floor
    "dro_stratified": ("minmax", None, {**ROBUST, "group_step_size": 0.03}),
    # the same, scored by the excess loss over the same seed's ERM run (its per-example training losses at the end)
    "dro_excess": ("minmax", None, {**ROBUST, "group_step_size": 0.3, "group_reference": "column"}),
    # weights driven by the validation split's group losses every 20 steps (natural sampling)
    "dro_heldout": (
        "minmax",
        None,
        {"group_update_dataset": "validation", "group_update_steps": 20, "group_step_size": 0.3},
    ),
}
METHODS = tuple(METHOD_SPECS)
# the paper-style table's methods (the default); the dro_* variants need a validation split
TABLE_METHODS = ("erm", "reweight", "minmax", "hyper")


# ------------------------------------------------------------------------------------------------------ aggregation


def summarize_cells(cells: Sequence[Mapping]) -> dict:
    """Mean ± std over the seeds of one method's cells (each cell's ``result`` is an ``evaluate_causal_lm`` output).

    Gap, worst-group perplexity and overall are computed per seed first, then averaged: the mean gap is the mean of
    the seeds' gaps, not the gap of the mean perplexities.
    """
    results = [cell["result"] for cell in cells]
    groups = sorted({group for result in results for group in result["per_group"]})
    summary = {"seeds": [cell["seed"] for cell in cells], "per_group": {}}
    for group in groups:
        summary["per_group"][group] = mean_std([result["per_group"][group] for result in results])
    summary["gap"] = mean_std([result["gap"] for result in results])
    summary["worst"] = mean_std([result["per_group"][result["worst_group"]] for result in results])
    summary["worst_groups"] = [result["worst_group"] for result in results]
    summary["overall"] = mean_std([result["overall"] for result in results])
    return summary


def summarize_domain(base: Mapping, cells: Sequence[Mapping], methods: Sequence[str]) -> dict:
    """``{"base": base result, "methods": {method: summarize_cells(...)}}`` for the methods with finished cells."""
    by_method = {method: [cell for cell in cells if cell["method"] == method] for method in methods}
    by_method = {method: sorted(found, key=lambda cell: cell["seed"]) for method, found in by_method.items() if found}
    return {"base": base, "methods": {method: summarize_cells(found) for method, found in by_method.items()}}


def _pm(value: tuple[float, float], digits: int = 2) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def markdown_table(summary: Mapping, digits: int = 2) -> str:
    """One row per group, then worst group, worst-group perplexity, gap and overall; base column then one per method.

    Method cells read ``mean ± std`` over seeds; the worst-group row lists each seed's worst group.
    """
    base, methods = summary["base"], summary["methods"]
    names = list(methods)
    seeds = {name: len(methods[name]["seeds"]) for name in names}
    header = ["group", "base"] + [f"{name} ({seeds[name]} seeds)" for name in names]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    groups = sorted(set(base["per_group"]) | {group for name in names for group in methods[name]["per_group"]})
    for group in groups:
        cells = [f"{base['per_group'][group]:.{digits}f}" if group in base["per_group"] else ""]
        cells += [
            _pm(methods[n]["per_group"][group], digits) if group in methods[n]["per_group"] else "" for n in names
        ]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    worst_base = base["per_group"][base["worst_group"]]
    lines.append(
        "| worst group | " + " | ".join([base["worst_group"]] + [_worst_names(methods[n]) for n in names]) + " |"
    )
    lines.append(
        "| **worst-group perplexity** | "
        + " | ".join([f"**{worst_base:.{digits}f}**"] + [f"**{_pm(methods[n]['worst'], digits)}**" for n in names])
        + " |"
    )
    lines.append(
        "| **gap (max − min)** | "
        + " | ".join([f"**{base['gap']:.{digits}f}**"] + [f"**{_pm(methods[n]['gap'], digits)}**" for n in names])
        + " |"
    )
    lines.append(
        "| overall | "
        + " | ".join([f"{base['overall']:.{digits}f}"] + [_pm(methods[n]["overall"], digits) for n in names])
        + " |"
    )
    return "\n".join(lines)


def _worst_names(method_summary: Mapping) -> str:
    """``"g (3/3)"`` or ``"g (2/3), h (1/3)"``: how many seeds ended with each worst group, most frequent first."""
    names = method_summary["worst_groups"]
    counts = sorted({name: names.count(name) for name in names}.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} ({count}/{len(names)})" for name, count in counts)


def plot_summaries(summaries: Mapping[str, Mapping], path: str | Path) -> Path:
    """Per-group perplexity per method (bars: mean over seeds, error bars: std), base as hollow bars; one panel per
    domain."""
    plt = pyplot()
    domains = list(summaries)
    widths = [max(3, len(summaries[domain]["base"]["per_group"])) for domain in domains]
    figure, axes = plt.subplots(
        1, len(domains), figsize=(2.2 + 1.3 * sum(widths), 4.4), gridspec_kw={"width_ratios": widths}, squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, domain in zip(axes[0], domains):
        summary = summaries[domain]
        groups = sorted(summary["base"]["per_group"])
        names = ["base", *summary["methods"]]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            positions = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
            if name == "base":
                values = [summary["base"]["per_group"][group] for group in groups]
                axis.bar(positions, values, width, fill=False, edgecolor="grey", label="base")
                continue
            stats = summary["methods"][name]["per_group"]
            means = [stats[group][0] if group in stats else math.nan for group in groups]
            stds = [stats[group][1] if group in stats else 0.0 for group in groups]
            gap = summary["methods"][name]["gap"]
            axis.bar(
                positions,
                means,
                width,
                yerr=stds,
                capsize=2,
                color=colors[(i - 1) % len(colors)],
                label=f"{name} (gap {gap[0]:.1f} ± {gap[1]:.1f})",
            )
        axis.set_xticks(range(len(groups)))
        axis.set_xticklabels([group.replace("_", " ") for group in groups], rotation=20, ha="right", fontsize=8)
        axis.set_title(f"BOLD {domain.replace('_', ' ')}")
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("perplexity on held-out people (lower is better)")
    return save_figure(figure, path, dpi=80)


def plot_curves(curves: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """Per domain: held-out (test) and validation worst-group perplexity against steps for every method with a curve
    (seed-averaged where several seeds share the steps), and each method's group weights over training."""
    plt = pyplot()
    domains = [d for d in curves if curves[d]]
    methods = {d: sorted({cell["method"] for cell in curves[d]}) for d in domains}
    width = 1 + max(len(m) for m in methods.values())
    figure, axes = plt.subplots(len(domains), width, figsize=(3.6 * width, 3.2 * len(domains)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, domain in enumerate(domains):
        axis = axes[row][0]
        for i, method in enumerate(methods[domain]):
            found = [cell for cell in curves[domain] if cell["method"] == method]
            by_step: dict[int, list[tuple[float, float]]] = {}
            for cell in found:
                for point in cell["curve"]:
                    if "test" in point and "validation" in point:
                        by_step.setdefault(point["step"], []).append(
                            (point["test"]["worst"], point["validation"]["worst"])
                        )
            steps = sorted(by_step)
            color = colors[i % len(colors)]
            axis.plot(steps, [statistics.fmean(t for t, _ in by_step[s]) for s in steps], color=color, label=method)
            axis.plot(steps, [statistics.fmean(v for _, v in by_step[s]) for s in steps], color=color, ls=":")
        axis.set_title(f"{domain}: worst-group perplexity\n(solid: held-out people, dotted: validation)", fontsize=8)
        axis.set_xlabel("step")
        axis.legend(fontsize=6)
        for i, method in enumerate(methods[domain]):
            axis = axes[row][1 + i]
            cell = next(cell for cell in curves[domain] if cell["method"] == method)
            points = [point for point in cell["curve"] if "weights" in point]
            for group in sorted(points[0]["weights"]) if points else []:
                axis.plot([p["step"] for p in points], [p["weights"][group] for p in points], label=group[:18])
            axis.set_title(f"{domain}/{method} seed {cell['seed']}: group weights", fontsize=8)
            axis.set_xlabel("step")
            if len(points) and len(points[0]["weights"]) <= 6:
                axis.legend(fontsize=6)
        for axis in axes[row][1 + len(methods[domain]) :]:
            axis.axis("off")
    return save_figure(figure, path, dpi=70)


# ---------------------------------------------------------------------------------------------------------- running


def domain_data(records: list[dict], settings, split_seed: int, validation_fraction: float = 0.0):
    """``(train, validation, test)`` ``datasets.Dataset``s: records split by person with ``split_seed`` (held-out
    people for test; with ``validation_fraction`` > 0, a further share of the *training* people for validation, else
    ``None``) and subsampled per group (``settings.max_train_per_group`` / ``max_eval_per_group``) with the same seed,
    whatever the training seed."""
    from datasets import Dataset

    from hf_egt.apps.data import subsample_per_group
    from hf_egt.apps.offline import split_by_person

    train, test = split_by_person(records, settings.eval_fraction, seed=split_seed)
    validation = None
    if validation_fraction > 0:
        train, validation = split_by_person(train, validation_fraction, seed=split_seed + 1)
        validation = subsample_per_group(
            Dataset.from_list(validation), "group", settings.max_eval_per_group, split_seed
        )
    train = subsample_per_group(Dataset.from_list(train), "group", settings.max_train_per_group, split_seed)
    test = subsample_per_group(Dataset.from_list(test), "group", settings.max_eval_per_group, split_seed)
    return train, validation, test


def run_cell(
    model,
    tokenizer,
    train,
    test,
    settings,
    domain: str,
    method: str,
    seed: int,
    work_dir: Path,
    hyper_learning_rate: float | None = None,
    validation=None,
    eval_steps: int = 0,
    specs: Mapping[str, tuple] | None = None,
    selection_metric: str = "eval_validation_worst_group_perplexity",
    test_in_curve: bool = True,
    n_bootstrap: int = 0,
    store_reference: bool = True,
    test_prefixes: Sequence[str] | None = None,
    test_kwargs: Mapping | None = None,
) -> dict:
    """Train one (method, seed) adapter on ``train`` and measure per-group perplexity on ``test``; return the cell.

    ``specs`` maps method names to ``METHOD_SPECS``-shaped entries (default ``METHOD_SPECS``); ``selection_metric``
    is the ``metric_for_best_model`` of best-step selection; ``test_in_curve=False`` evaluates only the validation
    split during training (``test`` once, at the end; ``test=None``: not at all, for screening on validation).
    ``store_reference=False`` skips the erm cell's pass over the training set for ``dro_excess``'s reference.
    ``test_prefixes`` condition each test text on a prefix (a group-conditional model; ``evaluate_causal_lm``);
    ``test_kwargs`` go to that ``evaluate_causal_lm`` call (e.g. ``feature_model`` for the EGT of generations).

    ``hyper_learning_rate`` (default ``settings.learning_rate``) is the hypernetwork's learning rate. With
    ``validation`` and ``eval_steps`` > 0, both splits are evaluated every ``eval_steps`` steps (the cell's
    ``curve``) and the adapter kept is the one of the step with the lowest *validation* worst-group perplexity
    (``metric_for_best_model`` with ``load_best_model_at_end``): each method at its own best step, chosen without
    the held-out people. The ``erm`` cell then also stores its per-example training losses (``dro_excess``'s
    reference).
    """
    from hf_egt.apps.recipe import lora_config, train_adapter
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    objective, hyper_fields, overrides = (specs or METHOD_SPECS)[method]
    hyper = hyper_fields is not None
    if hyper:
        # The whole training set fixes the HyperLoRA context of every evaluation: left unset, each evaluation batch
        # would generate its LoRA weights from its own (test) sentences; fixed, it is one adapter like the LoRA ones.
        from hf_egt.integrations.hyper import FixedContextCallback, fix_context, tokenize_context_set

        context_set = tokenize_context_set(tokenizer, train["text"], settings.max_length)
    seeded = replace(settings, seed=seed)
    if hyper and hyper_learning_rate is not None:
        seeded = replace(seeded, learning_rate=hyper_learning_rate)
    output_dir = work_dir / "trainer" / domain / method / f"seed{seed}"
    selection = {}
    if validation is not None and eval_steps > 0:
        in_curve = {"validation": validation, "test": test} if test_in_curve and test is not None else {}
        selection = {
            "eval_dataset": in_curve or {"validation": validation},
            "eval_steps": eval_steps,
            "save_strategy": "steps",
            "save_steps": eval_steps,
            "save_total_limit": 1,
            "load_best_model_at_end": True,
            "metric_for_best_model": selection_metric,
        }
        if hyper:  # every evaluation measures the adapter of the training set's context, as the final one below
            selection["callbacks"] = [FixedContextCallback(context_set)]
    elif "group_update_dataset" in overrides:
        raise ValueError(f"Method {method!r} needs a validation split: pass `eval_steps` > 0 and `validation`.")
    if overrides.get("group_reference") == "column":
        reference = read_json(work_dir / "cells" / domain / "erm" / f"seed{seed}.reference.json")
        if reference is None:
            raise FileNotFoundError(
                f"{method!r} needs the reference losses of the erm cell of seed {seed}: run erm first."
            )
        train = train.add_column("reference_loss", reference["losses"])
    started = time.perf_counter()
    trainer = train_adapter(
        model,
        tokenizer,
        train,
        seeded,
        objective=settings.objective if method == "minmax" else objective,
        output_dir=output_dir,
        peft_config=lora_config(model, seeded, hyper=hyper, **(hyper_fields or {})),
        **{**selection, **overrides},
    )
    train_s = time.perf_counter() - started
    if method == "erm" and selection and store_reference:
        losses = trainer.reference_losses(trainer.train_dataset).tolist()
        write_json(work_dir / "cells" / domain / "erm" / f"seed{seed}.reference.json", {"losses": losses})
    if hyper:
        fix_context(trainer.model, context_set)
    result = None
    if test is not None:
        result = evaluate_causal_lm(
            trainer.model,
            tokenizer,
            list(test["text"]),
            list(test["group"]),
            batch_size=settings.per_device_eval_batch_size,
            max_length=settings.max_length,
            name=f"{domain}/{method}/seed{seed}",
            n_bootstrap=n_bootstrap,
            prefixes=test_prefixes,
            **(test_kwargs or {}),
        )
    weights = trainer.group_objective.weights.detach().cpu().tolist()
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    if selection:
        import shutil

        shutil.rmtree(output_dir, ignore_errors=True)  # the checkpoints were only there to reload the best one
    return {
        "domain": domain,
        "method": method,
        "seed": seed,
        "objective": objective,
        "hyper": hyper,
        "hyper_fields": hyper_fields,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "overrides": overrides,
        "learning_rate": seeded.learning_rate,
        "result": result,
        "best_step": _best_step(trainer.state) if selection else None,
        "curve": training_curve(trainer.state.log_history) if selection else None,
        "final_group_weights": dict(zip(trainer.group_objective.groups, weights)),
        "train_loss": losses[-1] if losses else None,
        "train_s": train_s,
        "eval_s": time.perf_counter() - started - train_s,
    }


def _best_step(state) -> int | None:
    """The step of ``state.best_model_checkpoint`` (``checkpoint-<step>``)."""
    if not state.best_model_checkpoint:
        return None
    return int(Path(state.best_model_checkpoint).name.split("-")[-1])


def training_curve(log_history: Sequence[Mapping]) -> list[dict]:
    """Per step: the validation and test per-group perplexities (and NLL per sequence, under ``sequence_nll``) and the
    Trainer's eval loss (from the evaluations), and the group weights, training group losses and effective number of
    groups ``1 / sum q^2`` (from the training logs)."""
    steps: dict[int, dict] = {}
    for entry in log_history:
        row = steps.setdefault(int(entry.get("step", 0)), {"step": int(entry.get("step", 0))})
        for split in ("validation", "test"):
            prefix = f"eval_{split}_group_perplexity/"
            per_group = {k[len(prefix) :]: v for k, v in entry.items() if k.startswith(prefix)}
            if per_group:
                row[split] = {"per_group": per_group, "worst": max(per_group.values())}
                if f"eval_{split}_loss" in entry:
                    row[split]["loss"] = entry[f"eval_{split}_loss"]
                prefix = f"eval_{split}_group_sequence_nll/"
                per_sequence = {k[len(prefix) :]: v for k, v in entry.items() if k.startswith(prefix)}
                if per_sequence:
                    row[split]["sequence_nll"] = {"per_group": per_sequence, "worst": max(per_sequence.values())}
        weights = {k.split("/", 1)[1]: v for k, v in entry.items() if k.startswith("group_weight/")}
        if weights and "loss" in entry:
            row["weights"] = weights
            row["effective_groups"] = 1.0 / sum(w * w for w in weights.values())
            row["train_group_loss"] = {k.split("/", 1)[1]: v for k, v in entry.items() if k.startswith("group_loss/")}
    return [steps[step] for step in sorted(steps) if len(steps[step]) > 1]


def run_quality(
    output_dir: str | Path,
    *,
    domains: Sequence[str],
    held_out_domain: str | None,
    seeds: Sequence[int],
    methods: Sequence[str],
    settings,
    split_seed: int = 0,
    hyper_learning_rate: float | None = None,
    resume: bool = False,
    model_loader: Callable | None = None,
    records_loader: Callable[[str], list[dict]] | None = None,
    command: str | None = None,
    validation_fraction: float = 0.0,
    eval_steps: int = 0,
) -> dict:
    """Run every missing cell (domains in order, the held-out domain last), then write the results; return them.

    With ``validation_fraction`` > 0 and ``eval_steps`` > 0, each method is reported at its own best step on a
    validation split of the training people (see ``run_cell``)."""
    from tqdm.auto import tqdm

    from hf_egt.apps.offline import load_bold_records, load_cached_smollm2
    from hf_egt.core.groups import label_counts
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    unknown = sorted(set(methods) - set(METHOD_SPECS))
    if unknown:
        raise ValueError(f"`methods` has unknown entries {unknown}; valid: {list(METHOD_SPECS)}.")
    selecting = validation_fraction > 0 and eval_steps > 0
    needs_validation = [m for m in methods if "group_update_dataset" in METHOD_SPECS[m][2]]
    if needs_validation and not selecting:
        raise ValueError(
            f"`methods` {needs_validation} need a validation split: set `validation_fraction` and `eval_steps`."
        )
    if "dro_excess" in methods and "erm" in methods and methods.index("dro_excess") < methods.index("erm"):
        raise ValueError("`methods` lists dro_excess before erm, whose losses it uses as reference: put erm first.")
    output_dir = Path(output_dir)
    all_domains = [domain for domain in domains if domain != held_out_domain]
    all_domains += [held_out_domain] if held_out_domain else []
    records_loader = records_loader or load_bold_records
    started = time.perf_counter()
    model = tokenizer = None
    total = len(all_domains) * len(methods) * len(seeds)
    progress = tqdm(total=total, desc="cells")
    for domain in all_domains:
        train, validation, test = domain_data(
            records_loader(domain), settings, split_seed, validation_fraction if selecting else 0.0
        )
        todo = [
            (m, s) for m in methods for s in seeds if not (resume and cell_path(output_dir, domain, m, s).is_file())
        ]
        progress.update(len(methods) * len(seeds) - len(todo))
        if resume and not todo and base_path(output_dir, domain).is_file():
            continue
        if model is None:
            model, tokenizer = (model_loader or load_cached_smollm2)()
        if not (resume and base_path(output_dir, domain).is_file()):
            base_started = time.perf_counter()
            base = evaluate_causal_lm(
                model,
                tokenizer,
                list(test["text"]),
                list(test["group"]),
                batch_size=settings.per_device_eval_batch_size,
                max_length=settings.max_length,
                name=f"{domain}/base",
            )
            payload = {"domain": domain, "result": base, "eval_s": time.perf_counter() - base_started}
            payload |= {"train_counts": label_counts(train["group"]), "eval_counts": label_counts(test["group"])}
            if validation is not None:
                payload["validation_counts"] = label_counts(validation["group"])
            write_json(base_path(output_dir, domain), payload)
        for method, seed in todo:
            progress.set_postfix_str(f"{domain}/{method}/seed{seed}")
            cell = run_cell(
                model,
                tokenizer,
                train,
                test,
                settings,
                domain,
                method,
                seed,
                output_dir,
                hyper_learning_rate,
                validation=validation,
                eval_steps=eval_steps if selecting else 0,
            )
            write_json(cell_path(output_dir, domain, method, seed), cell)
            logger.info(
                "%s/%s/seed%d: gap %.2f, worst %s, overall %.2f (train %.0f s, eval %.0f s)",
                domain,
                method,
                seed,
                cell["result"]["gap"],
                cell["result"]["worst_group"],
                cell["result"]["overall"],
                cell["train_s"],
                cell["eval_s"],
            )
            progress.update(1)
    progress.close()
    return write_results(
        output_dir,
        domains=all_domains,
        held_out_domain=held_out_domain,
        seeds=seeds,
        methods=methods,
        settings=settings,
        split_seed=split_seed,
        command=command,
        wall_s=time.perf_counter() - started,
    )


def collect(output_dir: str | Path, domain: str, methods: Sequence[str], seeds: Sequence[int]) -> tuple[dict, list]:
    """The base result and the finished cells of a domain, read back from their JSON files."""
    base = read_json(base_path(output_dir, domain))
    if base is None:
        raise FileNotFoundError(f"{base_path(output_dir, domain)} is missing: the domain {domain!r} has not run.")
    cells = [read_json(cell_path(output_dir, domain, m, s)) for m in methods for s in seeds]
    return base, [cell for cell in cells if cell is not None]


def write_results(
    output_dir: str | Path,
    *,
    domains: Sequence[str],
    held_out_domain: str | None,
    seeds: Sequence[int],
    methods: Sequence[str],
    settings,
    split_seed: int,
    command: str | None = None,
    wall_s: float | None = None,
) -> dict:
    """``results.json``, ``results.md`` and ``quality_bold.png`` from the cell files; domains with no base skipped."""
    output_dir = Path(output_dir)
    summaries, cells, bases = {}, {}, {}
    for domain in domains:
        if not base_path(output_dir, domain).is_file():
            continue
        base, cells[domain] = collect(output_dir, domain, methods, seeds)
        bases[domain] = base
        summaries[domain] = summarize_domain(base["result"], cells[domain], methods)
    timings = {
        domain: {
            "base_eval_s": bases[domain]["eval_s"],
            "cells_s": sum(cell["train_s"] + cell["eval_s"] for cell in cells[domain]),
        }
        for domain in summaries
    }
    payload = {
        "command": command,
        "settings": asdict(settings),
        "split_seed": split_seed,
        "seeds": list(seeds),
        "methods": list(methods),
        "held_out_domain": held_out_domain,
        "wall_s_this_invocation": wall_s,
        "timings": timings,
        "counts": {d: {"train": bases[d]["train_counts"], "eval": bases[d]["eval_counts"]} for d in summaries},
        "summaries": summaries,
        "cells": cells,
    }
    paths = {"json": output_dir / "results.json", "md": output_dir / "results.md"}
    output_dir.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(payload, indent=2), encoding="utf-8")
    parts = ["# BOLD quality table: per-group perplexity on held-out people", ""]
    if command:
        parts += ["```bash", command, "```", ""]
    for domain, summary in summaries.items():
        title = f"## {domain}" + (
            " (held out: run last, not looked at while choosing settings)" if domain == held_out_domain else ""
        )
        counts = payload["counts"][domain]
        parts += [title, "", f"Training rows per group: {counts['train']}; eval rows per group: {counts['eval']}.", ""]
        parts += [markdown_table(summary), ""]
    if summaries:
        paths["png"] = plot_summaries(summaries, output_dir / "quality_bold.png")
        parts += ["![per-group perplexity per method](quality_bold.png)", ""]
    curves = {d: [c for c in cells[d] if c.get("curve")] for d in summaries}
    if any(curves.values()):
        parts += ["## Best steps (lowest validation worst-group perplexity) and effective number of groups", ""]
        parts += [
            "| domain | method | seed | best step | final 1/Σq² | min 1/Σq² |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for domain, found in curves.items():
            for cell in found:
                effective = [row["effective_groups"] for row in cell["curve"] if "effective_groups" in row]
                final, low = (f"{effective[-1]:.2f}", f"{min(effective):.2f}") if effective else ("", "")
                parts.append(
                    f"| {domain} | {cell['method']} | {cell['seed']} | {cell['best_step']} | {final} | {low} |"
                )
        paths["curves_png"] = plot_curves(curves, output_dir / "quality_bold_curves.png")
        parts += ["", "![worst-group perplexity and group weights over training](quality_bold_curves.png)", ""]
    paths["md"].write_text("\n".join(parts), encoding="utf-8")
    payload["paths"] = {key: str(path) for key, path in paths.items()}
    return payload


# -------------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from hf_egt.apps.arguments import add_renamed_options
    from hf_egt.apps.recipe import DEFAULT, DEMO_RENAMED_OPTIONS
    from hf_egt.core.objective import OBJECTIVE_MODES

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--domains", nargs="+", default=["race", "gender"], help="BOLD axes (default: race gender).")
    parser.add_argument(
        "--held_out_domain", default="religious_ideology", help="BOLD axis run last and reported apart ('' for none)."
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Training seeds (default 0 1 2).")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(TABLE_METHODS),
        choices=METHODS,
        help=f"Methods to compare (default: {' '.join(TABLE_METHODS)}).",
    )
    parser.add_argument("--output_dir", default="outputs/quality_bold", help="Where cells and tables go.")
    parser.add_argument("--resume", action="store_true", help="Skip the cells whose JSON file already exists.")
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the by-person split and subsampling.")
    parser.add_argument("--max_train_per_group", type=int, default=DEFAULT.max_train_per_group)
    parser.add_argument("--max_eval_per_group", type=int, default=DEFAULT.max_eval_per_group)
    parser.add_argument("--eval_fraction", type=float, default=DEFAULT.eval_fraction, help="Share of people held out.")
    parser.add_argument(
        "--max_steps",
        type=int,
        default=30,
        help="Optimizer steps per cell (demo: 60; 30 so 36 cells fit in ~1 h on a shared 2-core CPU).",
    )
    parser.add_argument("--per_device_train_batch_size", type=int, default=DEFAULT.per_device_train_batch_size)
    parser.add_argument("--learning_rate", type=float, default=DEFAULT.learning_rate)
    parser.add_argument("--max_length", type=int, default=DEFAULT.max_length)
    parser.add_argument(
        "--hyper_learning_rate", type=float, default=None, help="Learning rate of the hyper method (default: same)."
    )
    parser.add_argument("--lora_r", type=int, default=DEFAULT.lora_r)
    parser.add_argument("--lora_last_layers", type=int, default=DEFAULT.lora_last_layers)
    parser.add_argument("--group_step_size", type=float, default=DEFAULT.group_step_size)
    parser.add_argument(
        "--objective",
        default=DEFAULT.objective,
        choices=[mode for mode in OBJECTIVE_MODES if mode != "erm"],
        help="Objective of the minmax method.",
    )
    parser.add_argument(
        "--validation_fraction",
        type=float,
        default=0.0,
        help="Share of the training people held out as a validation split (with --eval_steps: best-step selection).",
    )
    parser.add_argument(
        "--eval_steps", type=int, default=0, help="Evaluate validation and test every N steps (0: only at the end)."
    )
    parser.add_argument("--log_level", default="INFO")
    # the names of `hf-egt demo` (whose settings these are); the old ones are still read, with a warning
    add_renamed_options(parser, {**DEMO_RENAMED_OPTIONS, "--test_fraction": "--eval_fraction"})
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace):
    from hf_egt.apps.recipe import DEFAULT

    return replace(
        DEFAULT,
        max_train_per_group=args.max_train_per_group,
        max_eval_per_group=args.max_eval_per_group,
        eval_fraction=args.eval_fraction,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_last_layers=args.lora_last_layers,
        group_step_size=args.group_step_size,
        objective=args.objective,
        feature_model=None,
        seed=args.split_seed,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python benchmarks/quality_bold.py"
    command += "".join(f" {shlex.quote(str(arg))}" for arg in argv)
    return run_quality(
        args.output_dir,
        domains=args.domains,
        held_out_domain=args.held_out_domain or None,
        seeds=args.seeds,
        methods=args.methods,
        settings=settings_from_args(args),
        split_seed=args.split_seed,
        hyper_learning_rate=args.hyper_learning_rate,
        resume=args.resume,
        command=command,
        validation_fraction=args.validation_fraction,
        eval_steps=args.eval_steps,
    )


if __name__ == "__main__":
    results = main()
    print(Path(results["paths"]["md"]).read_text(encoding="utf-8"))
