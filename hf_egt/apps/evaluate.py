"""``hf-egt evaluate``: per-group perplexity and EGT divergence of a model (and adapter) on a dataset; with
``--adapter`` the output folder of ``hf-egt train``, the held-out rows recorded in its ``split.json``."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hf_egt.apps import checks
from hf_egt.apps.arguments import DefaultsHelpFormatter, add_dashed_aliases, add_renamed_options, redacted_command
from hf_egt.apps.reporting import held_out_sentence

logger = logging.getLogger(__name__)


EVALUATE_RENAMED_OPTIONS = {
    "--max_per_group": "--max_eval_per_group",
    "--split": "--eval_split",
    "--batch_size": "--per_device_eval_batch_size",
    "--compare_base": "--eval_base",
}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_egt.core.metrics import DIVERGENCES, RECOMMENDED_TEXT_DIVERGENCE

    parser.add_argument(
        "--model_name_or_path", required=True, help="Hub id, local folder or .gguf file of a causal LM."
    )
    parser.add_argument("--adapter", default=None, help="A peft adapter (folder or Hub id) to apply to the model.")
    parser.add_argument(
        "--eval_base",
        action="store_true",
        help="With --adapter: also evaluate the base model (without --adapter, the base model is what is evaluated).",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="bold-<domain>, bible-<language>-..., a local json/csv/parquet file, or a Hub id.",
    )
    parser.add_argument("--dataset_config", default=None, help="Configuration of a Hub dataset.")
    parser.add_argument(
        "--eval_split",
        default=None,
        help="Evaluate on this split (default: test/validation if present, else held-out "
        "rows; with --adapter, the rows recorded in its split.json).",
    )
    parser.add_argument("--text_column", default="text", help="Column of the text to evaluate.")
    parser.add_argument("--group_column", default="group", help="Column of each row's group.")
    parser.add_argument(
        "--groups",
        nargs="+",
        default=None,
        help="Evaluate these groups only (default: every group of the data). A group of the data not listed is an "
        "error naming its rows, unless --skip_unusable_groups, which leaves it out with a warning in the report.",
    )
    parser.add_argument(
        "--max_eval_per_group", type=int, default=None, help="At most this many eval rows per group (default: all)."
    )
    parser.add_argument(
        "--feature_model",
        default="minilm",
        help="Sentence encoder for the EGT divergence: 'minilm' (offline all-MiniLM-L6-v2), a Hub id or folder, "
        "or 'none' to skip generation.",
    )
    parser.add_argument(
        "--divergence",
        default=RECOMMENDED_TEXT_DIVERGENCE,
        choices=list(DIVERGENCES),
        help="Divergence of the EGT report (hf_egt.core.metrics.DIVERGENCES); the default is the one docs/metric.md "
        "supports at ~100 samples per group.",
    )
    parser.add_argument(
        "--max_prompts_per_group",
        type=int,
        default=100,
        help="Prompts (sentence prefixes) per group; EGT needs hf_egt.core.metrics.minimum_samples(divergence) "
        "of them.",
    )
    parser.add_argument(
        "--ignore_recorded_split",
        action="store_true",
        help="With --adapter: do not reuse the held-out rows recorded in its split.json (default: reuse them).",
    )
    parser.add_argument(
        "--skip_unusable_groups",
        action="store_true",
        help="Leave out, with a warning repeated in the report, groups too small to evaluate, groups not listed in "
        "--groups and rows without group or text (default: an error naming them).",
    )
    parser.add_argument("--eval_fraction", type=float, default=0.2, help="Held-out share without an eval split.")
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace the report of an earlier evaluation in --output_dir (refused otherwise).",
    )
    parser.add_argument("--num_prompt_words", type=int, default=4, help="Words of each sentence kept as the prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=24, help="Tokens generated per prompt (EGT).")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=8, help="Rows per forward pass.")
    parser.add_argument("--max_length", type=int, default=512, help="Truncation length (tokens) of each row.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the held-out split, subsampling and generation.")
    parser.add_argument("--output_dir", default="outputs/evaluate", help="Where report.json/.md/.png go.")
    add_dashed_aliases(parser)  # `--max-eval-per-group`, as `hf-egt train` accepts its options
    parser.formatter_class = DefaultsHelpFormatter
    add_renamed_options(parser, EVALUATE_RENAMED_OPTIONS, "hf-egt evaluate")


def load_feature_model(name: str) -> tuple:
    """The ``(model, tokenizer)`` of ``--feature_model``, loaded before any perplexity or generation, or an error that
    names the option (a missing folder, a Hub id that cannot be found or is not cached offline, a non-encoder)."""
    from hf_egt.integrations.features import load_text_encoder

    if not Path(name).exists() and name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"`--feature_model`: no such folder {name!r}.")
    try:
        return load_text_encoder(name)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"`--feature_model` {name!r} could not be loaded as a text encoder ({type(error).__name__}: {error}). "
            "Pass 'minilm' (all-MiniLM-L6-v2, offline), a Hub id or local folder of a Hugging Face encoder, or "
            "'none' for perplexity only."
        ) from error


def recorded_split(args: argparse.Namespace) -> dict | None:
    """The ``split.json`` of ``--adapter`` to reuse, or ``None`` (no adapter, no record, ``--split`` or
    ``--ignore_recorded_split`` given)."""
    from hf_egt.apps.data import read_split_record

    if (
        args.adapter is None
        or args.eval_split is not None
        or args.ignore_recorded_split
        or not Path(args.adapter).is_dir()
    ):
        return None
    return read_split_record(args.adapter)


def check_egt_sample_sizes(groups: Sequence[str], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Groups with too few prompts for ``--divergence``'s estimator: ``(too_small, messages)``; an error unless
    ``--skip_unusable_groups``. Runs before the model is loaded."""
    from hf_egt.integrations.evaluation import groups_too_small_for_egt

    minimum, small = groups_too_small_for_egt(groups, args.divergence, args.max_prompts_per_group)
    if not small:
        return [], []
    counts = dict(sorted(Counter(groups).items()))
    message = (
        f"group(s) {list(small)} have {list(small.values())} eval row(s) to prompt with, but the "
        f"{args.divergence!r} estimator needs at least {minimum} per group (`--max_prompts_per_group` "
        f"{args.max_prompts_per_group}, eval rows per group {counts})"
    )
    if not args.skip_unusable_groups:
        raise ValueError(
            f"{message}; add eval rows (`--max_eval_per_group`, a larger `--eval_fraction`), use "
            "`--feature_model none` for perplexity only, or pass `--skip_unusable_groups` to leave them out with a "
            "warning."
        )
    logger.warning("Left out of the evaluation: %s.", message)
    return list(small), [f"{message}: left out of the evaluation (perplexity and EGT)"]


def run_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """``hf-egt evaluate``: per-group report of a model (and adapter) on a dataset.

    With ``--adapter`` the output folder of ``hf-egt train``, the held-out rows recorded in its ``split.json`` are
    evaluated (same dataset, seed, fraction and subsampling; checked by content), and the report says so. Every check
    (divergence name, sample sizes, paths, data) runs before the model is loaded.
    """
    from hf_egt.apps.data import load_grouped_splits, subsample_per_group
    from hf_egt.apps.offline import resolve_feature_model
    from hf_egt.core.metrics.registry import check_divergence
    from hf_egt.integrations.evaluation import evaluate_causal_lm, write_report

    feature_model = resolve_feature_model(args.feature_model)
    encoder = None
    if feature_model is not None:
        check_divergence(args.divergence, "--divergence")  # an unknown name fails here, not after generation
        encoder = load_feature_model(feature_model)  # before any data, perplexity or generation work
    checks.check_adapter_path(args.adapter)
    if (Path(args.output_dir) / "report.json").exists() and not args.overwrite_output_dir:
        raise ValueError(
            f"`--output_dir`: {args.output_dir!r} already holds a report (report.json); pass `--overwrite_output_dir` "
            "to replace it, or another `--output_dir`."
        )
    for name in (
        "max_eval_per_group",
        "max_prompts_per_group",
        "max_new_tokens",
        "per_device_eval_batch_size",
        "max_length",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    record = recorded_split(args)
    options = {
        "text_column": args.text_column,
        "group_column": args.group_column,
        "groups": args.groups,
        "eval_split": args.eval_split,
        "config": args.dataset_config,
        "seed": args.seed,
        "eval_fraction": args.eval_fraction,
        "skip_unusable_groups": args.skip_unusable_groups,
    }
    if record is not None:
        options.update(
            text_column=record["text_column"],
            group_column=record["group_column"],
            groups=record["groups"],
            train_split=record["train_split"],
            eval_split=record["eval_split"],
            config=record["dataset_config"],
            seed=record["seed"],
            eval_fraction=record["eval_fraction"],
            # split records written before the rename name it max_per_group
            max_train_per_group=record.get("max_train_per_group", record.get("max_per_group")),
            max_eval_per_group=record["max_eval_per_group"],
            # what training left out (and recorded) is left out again, and the report repeats it
            skip_unusable_groups=args.skip_unusable_groups or bool(record["dropped"]),
        )
    data = load_grouped_splits(args.dataset, **options)
    evaluation, dropped = data.evaluation, list(data.dropped)
    text_column, group_column = options["text_column"], options["group_column"]
    if record is not None:
        source = Path(args.adapter) / "split.json"
        if data.split["eval_sha256"] != record["eval_sha256"]:
            raise ValueError(
                f"`--dataset`: the held-out rows of {args.dataset!r} do not match those recorded in {source} (from "
                f"{record['dataset']!r}): the data changed. Evaluate on the training data, or pass "
                "`--ignore_recorded_split` to split this dataset anew (its rows may then overlap the training rows)."
            )
        held_out = f"reused from {source}: {held_out_sentence(record)}"
    else:
        held_out = f"held out: {held_out_sentence(data.split)}"
    logger.info("Evaluation rows %s.", held_out)
    evaluation = subsample_per_group(evaluation, group_column, args.max_eval_per_group, args.seed)
    groups = [str(group) for group in evaluation[group_column]]
    if feature_model is not None:
        too_small, messages = check_egt_sample_sizes(groups, args)
        if too_small:
            keep = [i for i, group in enumerate(groups) if group not in set(too_small)]
            evaluation, groups = evaluation.select(keep), [groups[i] for i in keep]
            dropped += messages
        if not groups:
            raise ValueError(f"No group is left to evaluate: {messages[0]}.")
    checks.check_model_path(args.model_name_or_path)
    model, tokenizer = checks.load_checked_causal_lm(args.model_name_or_path)
    texts = list(evaluation[text_column])
    kwargs = {
        "batch_size": args.per_device_eval_batch_size,
        "max_length": args.max_length,
        "feature_model": encoder,
        "num_prompt_words": args.num_prompt_words,
        "max_new_tokens": args.max_new_tokens,
        "max_prompts_per_group": args.max_prompts_per_group,
        "divergence": args.divergence,
        "seed": args.seed,
    }
    runs = {}
    if args.adapter is None or args.eval_base:
        runs["base"] = evaluate_causal_lm(model, tokenizer, texts, groups, name="base", **kwargs)
    if args.adapter is not None:
        from peft import PeftModel

        name = Path(args.adapter).name or "adapter"
        model = PeftModel.from_pretrained(model, args.adapter)
        runs[name] = evaluate_causal_lm(model, tokenizer, texts, groups, name=name, **kwargs)
    config = {key: value for key, value in vars(args).items() if key != "command"}
    config.update(held_out=held_out, dropped=dropped, eval_counts=dict(sorted(Counter(groups).items())))
    paths = write_report(
        runs,
        args.output_dir,
        title=f"hf-egt: {args.adapter or args.model_name_or_path} on {args.dataset}",
        config=config,
        command=redacted_command("hf-egt evaluate", argv),
        held_out=held_out,
        dropped=dropped,
    )
    return {
        "runs": runs,
        "paths": {key: str(path) for key, path in paths.items()},
        "held_out": held_out,
        "dropped": dropped,
    }
