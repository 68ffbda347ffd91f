"""Paper-style quality table on BOLD: per-group perplexity of SmolLM2-135M after ERM, reweight, min-max and
hypernetwork (HyperLoRA) fine-tuning, over several seeds, on sentences about held-out people.

For each domain (BOLD axis) the records are split by person once (``--split_seed``), so every method and seed is
measured on the same held-out people; the base model is measured once; then each (method, seed) cell trains an adapter
with ``hf_egt.demo.train_adapter`` (the seed sets the adapter's initialisation and the data order) and measures
per-group perplexity with ``hf_egt.evaluation.evaluate_causal_lm``. The held-out domain (``--held_out_domain``) runs
last and is reported in its own section: it is not looked at while choosing settings.

Outputs in ``--output_dir``: ``cells/<domain>/<method>/seed<k>.json`` (one per cell; ``--resume`` skips cells whose
file exists), ``cells/<domain>/base.json``, ``results.json`` (all cells plus the mean ± std summary), ``results.md``
(the tables) and ``quality_bold.png`` (per-group perplexity per method with error bars, one panel per domain).

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

logger = logging.getLogger("quality_bold")

METHODS = ("erm", "reweight", "minmax", "hyper")
# method -> (EGTTrainer objective, HyperLoRA adapter?)
METHOD_SPECS = {
    "erm": ("erm", False),
    "reweight": ("reweight", False),
    "minmax": ("minmax", False),
    "hyper": ("erm", True),
}


# ------------------------------------------------------------------------------------------------------ aggregation
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("`values` is empty: no finished cell to aggregate.")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------------- running
def cell_path(output_dir: str | Path, domain: str, method: str, seed: int) -> Path:
    return Path(output_dir) / "cells" / domain / method / f"seed{seed}.json"


def base_path(output_dir: str | Path, domain: str) -> Path:
    return Path(output_dir) / "cells" / domain / "base.json"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_json(path: Path, payload: Mapping) -> None:
    """Write through a temporary file, so a killed run never leaves a half-written cell that ``--resume`` trusts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    partial.replace(path)


def domain_data(records: list[dict], settings, split_seed: int):
    """``(train, test)`` ``datasets.Dataset``s: records split by person with ``split_seed`` and subsampled per group
    (``settings.max_train_per_group`` / ``max_eval_per_group``) with the same seed, whatever the training seed."""
    from datasets import Dataset

    from hf_egt.data import subsample_per_group
    from hf_egt.offline import split_by_person

    train, test = split_by_person(records, settings.test_fraction, seed=split_seed)
    train = subsample_per_group(Dataset.from_list(train), "group", settings.max_train_per_group, split_seed)
    test = subsample_per_group(Dataset.from_list(test), "group", settings.max_eval_per_group, split_seed)
    return train, test


def fit_hyper_context(model, tokenizer, texts: Sequence[str], max_length: int):
    """Fix a ``HyperLoRAModel``'s inference context to the encoding of the whole training set.

    Left unset, the model would generate each evaluation batch's LoRA weights from that batch's own (test) sentences;
    a fixed context from the training data makes it one adapter, evaluated like the LoRA ones.
    """
    device = next(model.parameters()).device
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return model.set_context(**batch.to(device))


def _counts(groups) -> dict[str, int]:
    counts: dict[str, int] = {}
    for group in groups:
        counts[str(group)] = counts.get(str(group), 0) + 1
    return dict(sorted(counts.items()))


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
) -> dict:
    """Train one (method, seed) adapter on ``train`` and measure per-group perplexity on ``test``; return the cell.

    ``hyper_learning_rate`` (default ``settings.learning_rate``) is the hypernetwork's learning rate.
    """
    from hf_egt.demo import lora_config, train_adapter
    from hf_egt.evaluation import evaluate_causal_lm

    objective, hyper = METHOD_SPECS[method]
    seeded = replace(settings, seed=seed)
    if hyper and hyper_learning_rate is not None:
        seeded = replace(seeded, learning_rate=hyper_learning_rate)
    started = time.perf_counter()
    trainer = train_adapter(
        model,
        tokenizer,
        train,
        seeded,
        objective=settings.minmax_objective if objective == "minmax" else objective,
        output_dir=work_dir / "trainer" / domain / method / f"seed{seed}",
        peft_config=lora_config(model, seeded, hyper=hyper),
    )
    train_s = time.perf_counter() - started
    if hyper:
        fit_hyper_context(trainer.model, tokenizer, train["text"], settings.max_length)
    result = evaluate_causal_lm(
        trainer.model,
        tokenizer,
        list(test["text"]),
        list(test["group"]),
        batch_size=settings.eval_batch_size,
        max_length=settings.max_length,
        name=f"{domain}/{method}/seed{seed}",
    )
    weights = trainer.objective.weights.detach().cpu().tolist()
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    return {
        "domain": domain,
        "method": method,
        "seed": seed,
        "objective": objective,
        "hyper": hyper,
        "learning_rate": seeded.learning_rate,
        "result": result,
        "final_group_weights": dict(zip(trainer.objective.groups, weights)),
        "train_loss": losses[-1] if losses else None,
        "train_s": train_s,
        "eval_s": time.perf_counter() - started - train_s,
    }


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
) -> dict:
    """Run every missing cell (domains in order, the held-out domain last), then write the results; return them."""
    from tqdm.auto import tqdm

    from hf_egt.demo import load_cached_smollm2
    from hf_egt.evaluation import evaluate_causal_lm
    from hf_egt.offline import load_bold_records

    unknown = sorted(set(methods) - set(METHOD_SPECS))
    if unknown:
        raise ValueError(f"`methods` has unknown entries {unknown}; valid: {list(METHOD_SPECS)}.")
    output_dir = Path(output_dir)
    all_domains = [domain for domain in domains if domain != held_out_domain]
    all_domains += [held_out_domain] if held_out_domain else []
    records_loader = records_loader or load_bold_records
    started = time.perf_counter()
    model = tokenizer = None
    total = len(all_domains) * len(methods) * len(seeds)
    progress = tqdm(total=total, desc="cells")
    for domain in all_domains:
        train, test = domain_data(records_loader(domain), settings, split_seed)
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
                batch_size=settings.eval_batch_size,
                max_length=settings.max_length,
                name=f"{domain}/base",
            )
            payload = {"domain": domain, "result": base, "eval_s": time.perf_counter() - base_started}
            payload |= {"train_counts": _counts(train["group"]), "eval_counts": _counts(test["group"])}
            _write_json(base_path(output_dir, domain), payload)
        for method, seed in todo:
            progress.set_postfix_str(f"{domain}/{method}/seed{seed}")
            cell = run_cell(
                model, tokenizer, train, test, settings, domain, method, seed, output_dir, hyper_learning_rate
            )
            _write_json(cell_path(output_dir, domain, method, seed), cell)
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
    base = _read_json(base_path(output_dir, domain))
    if base is None:
        raise FileNotFoundError(f"{base_path(output_dir, domain)} is missing: the domain {domain!r} has not run.")
    cells = [_read_json(cell_path(output_dir, domain, m, s)) for m in methods for s in seeds]
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
    paths["md"].write_text("\n".join(parts), encoding="utf-8")
    payload["paths"] = {key: str(path) for key, path in paths.items()}
    return payload


# -------------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from hf_egt.demo import DEFAULT

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--domains", nargs="+", default=["race", "gender"], help="BOLD axes (default: race gender).")
    parser.add_argument(
        "--held_out_domain", default="religious_ideology", help="BOLD axis run last and reported apart ('' for none)."
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="Training seeds (default 0 1 2).")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Methods to compare.")
    parser.add_argument("--output_dir", default="outputs/quality_bold", help="Where cells and tables go.")
    parser.add_argument("--resume", action="store_true", help="Skip the cells whose JSON file already exists.")
    parser.add_argument("--split_seed", type=int, default=0, help="Seed of the by-person split and subsampling.")
    parser.add_argument("--max_train_per_group", type=int, default=DEFAULT.max_train_per_group)
    parser.add_argument("--max_eval_per_group", type=int, default=DEFAULT.max_eval_per_group)
    parser.add_argument("--test_fraction", type=float, default=DEFAULT.test_fraction, help="Share of people held out.")
    parser.add_argument(
        "--max_steps",
        type=int,
        default=30,
        help="Optimizer steps per cell (demo: 60; 30 so 36 cells fit in ~1 h on a shared 2-core CPU).",
    )
    parser.add_argument("--batch_size", type=int, default=DEFAULT.batch_size)
    parser.add_argument("--learning_rate", type=float, default=DEFAULT.learning_rate)
    parser.add_argument("--max_length", type=int, default=DEFAULT.max_length)
    parser.add_argument(
        "--hyper_learning_rate", type=float, default=None, help="Learning rate of the hyper method (default: same)."
    )
    parser.add_argument("--lora_r", type=int, default=DEFAULT.lora_r)
    parser.add_argument("--lora_last_layers", type=int, default=DEFAULT.lora_last_layers)
    parser.add_argument("--group_step_size", type=float, default=DEFAULT.group_step_size)
    parser.add_argument("--minmax_objective", default=DEFAULT.minmax_objective, help="Objective of the minmax method.")
    parser.add_argument("--log_level", default="INFO")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace):
    from hf_egt.demo import DEFAULT

    return replace(
        DEFAULT,
        max_train_per_group=args.max_train_per_group,
        max_eval_per_group=args.max_eval_per_group,
        test_fraction=args.test_fraction,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_last_layers=args.lora_last_layers,
        group_step_size=args.group_step_size,
        minmax_objective=args.minmax_objective,
        egt=False,
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
    )


if __name__ == "__main__":
    results = main()
    print(Path(results["paths"]["md"]).read_text(encoding="utf-8"))
