"""Model cards with the EGT report, and pushing an output folder to the Hub.

peft's ``save_pretrained`` rewrites the card's ``tags`` and ``PeftModel.push_to_hub`` replaces README.md, so the order
is: ``save_pretrained`` the adapter, then write the card (``build_model_card(...).save(folder / "README.md")``), then
``push_folder_to_hub`` (``create_repo`` + ``upload_folder``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hf_egt.core.vocabulary import LEGACY_OBJECTIVE_STATE_NAMES, OBJECTIVE_STATE_NAME

logger = logging.getLogger(__name__)

BASE_TAGS = ("hf-egt", "fairness", "lora", "group-dro")

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ description }}

{% if table %}## Equalized Generative Treatment (EGT) report

{{ metric_sentence }}

{{ table }}

{{ plot }}

Gap = worst group − best group; a fairer model has a smaller gap without a worse overall value. These numbers are
the only claim this card makes: one run, measured on held-out rows{{ held_out_sentence }}.

{% endif %}{% for title, body in sections %}## {{ title }}

{{ body }}

{% endfor %}## Training

- Base model: `{{ base_model }}`
- Dataset: {{ dataset }}{{ group_sentence }}
- Objective: `{{ objective }}` ({{ objective_description }})
- Adapter: {{ adapter_description }}
{{ settings }}{{ dropped }}

{{ reproduce }}

## Use

{{ usage }}

Trained with [hf-egt](https://github.com/hf-egt/hf-egt) (Equalized Generative Treatment: measure per-group generation
quality and fix it with min-max LoRA fine-tuning).
"""

GENERATION_SECTION = "EGT on generated text"

OBJECTIVE_DESCRIPTIONS = {
    "erm": "empirical risk minimisation, the plain mean loss",
    "reweight": "loss reweighted by inverse group frequency",
    "minmax": "min-max group DRO, exponentiated-gradient weights on the group losses (Sagawa et al. 2020)",
    "worst": "the loss of the worst group present in each batch",
    "ema": "softmax of an exponential moving average of the group losses",
}


def resolve_hub_token(token: str | None = None) -> str:
    """The token to push with: ``token``, else ``HF_TOKEN`` / the saved login; a clear error when there is none."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise ValueError(
            "Pushing to the Hub needs a token: pass `--hub_token`, set the HF_TOKEN environment variable, "
            "or run `hf auth login`."
        )
    return found


def check_hub_reachable(token: str, option: str = "--push_to_hub") -> None:
    """Before a run that pushes at its end: the Hub must be online and accept ``token`` (a ``whoami`` call); a
    ``ValueError`` naming ``option`` otherwise."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"`{option}`: the Hub is offline (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push, or drop "
            f"`{option}` and upload the output folder later."
        )
    try:
        HfApi(token=token).whoami()
    except Exception as error:  # noqa: BLE001 - connection, HTTP and authentication errors alike
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`{option}`: the Hub at {constants.ENDPOINT} cannot be reached with this token "
            f"({first_line}); check the network and the token, or drop `{option}`."
        ) from error


def _eval_results(report_run: Mapping, *, metric: str, dataset: str | None, task_type: str) -> list:
    from huggingface_hub import EvalResult

    common = {"task_type": task_type, "dataset_type": dataset or "custom", "dataset_name": dataset or "custom"}
    results = [
        EvalResult(**common, metric_type=metric, metric_name=f"{metric} ({group})", metric_value=round(float(value), 4))
        for group, value in report_run["per_group"].items()
    ]
    results.append(
        EvalResult(
            **common,
            metric_type=f"{metric}_gap",
            metric_name=f"{metric} gap (worst − best group)",
            metric_value=round(float(report_run["gap"]), 4),
        )
    )
    if "overall" in report_run:
        results.append(
            EvalResult(
                **common,
                metric_type=metric,
                metric_name=f"{metric} (overall)",
                metric_value=round(float(report_run["overall"]), 4),
            )
        )
    return results


def build_model_card(
    *,
    base_model: str,
    runs: Mapping[str, Mapping],
    objective: str,
    model_name: str,
    result_run: str | None = None,
    metric: str = "perplexity",
    dataset: str | None = None,
    group_column: str | None = None,
    command: str | None = None,
    plot: str | None = "report.png",
    library_name: str = "peft",
    pipeline_tag: str = "text-generation",
    task_type: str = "text-generation",
    tags: Sequence[str] = (),
    adapter_description: str | None = None,
    description: str | None = None,
    usage: str | None = None,
    license: str | None = None,
    eval_counts: Mapping[str, int] | None = None,
    settings: Mapping[str, object] | None = None,
    dropped: Sequence[str] = (),
    held_out: str | None = None,
    sections: Mapping[str, str] | None = None,
):
    """A ``huggingface_hub.ModelCard`` with the EGT report of one or several runs.

    Args:
        base_model: the Hub id (or path) of the model the adapter applies to (YAML ``base_model``).
        runs: run name -> ``hf_egt.core.metrics.GroupRun`` (``per_group``, ``counts``, ``gap``, ``worst_group``,
            ``overall``; e.g. ``{"base": ..., "minmax": ...}``);
            every run is a column of the card's table. Empty: a card without an EGT report (nothing was measured,
            e.g. the diffusion script's), and without ``model-index`` results.
        objective: the training objective (``erm``, ``minmax``...).
        model_name: the card's title and the ``model-index`` name (usually the repo id).
        result_run: the run whose numbers go into ``model-index`` (default: the last run).
        metric: what ``per_group`` holds (``perplexity``, ``divergence``, ``fid``...); lower is better.
        dataset: the dataset (YAML ``datasets`` when it looks like a Hub id, and the model-index dataset).
        group_column: the sensitive attribute's column, for the text.
        command: the command that reproduces the adapter.
        plot: relative path of the plot image in the repo (None: no image).
        library_name: ``peft`` for LoRA adapters, ``diffusers`` for diffusion LoRA weights.
        pipeline_tag / task_type: Hub pipeline tag and model-index task type.
        tags: extra tags, added to ``hf-egt``, ``fairness``, ``lora``, ``group-dro``.
        eval_counts: evaluated rows per group, a column of the table (the size behind each number); default: the
            ``counts`` of ``result_run``.
        settings: the training settings that produced the numbers (learning rate, steps, seed...), listed as is.
        dropped: what was left out of training or evaluation (groups, rows), repeated from the report.
        held_out: how the evaluated rows were held out (e.g. "20% of each group, seed 42; see split.json").
        sections: further sections, title -> markdown body, after the EGT report (e.g. the final group weights).
            Runs that carry an EGT report on generated text (``evaluate_causal_lm(feature_model=...)``) add its
            tables first, as ``report.md`` shows them (``egt_markdown``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from hf_egt.core.metrics import check_runs, runs_table
    from hf_egt.integrations.evaluation import egt_markdown

    check_runs(runs)
    if any("egt" in run for run in runs.values()):
        sections = {GENERATION_SECTION: egt_markdown(runs), **(sections or {})}
    result_run = result_run or (list(runs)[-1] if runs else None)
    if runs and result_run not in runs:
        raise ValueError(f"`result_run` {result_run!r} is not one of the runs {list(runs)}.")
    if runs and eval_counts is None:
        eval_counts = runs[result_run]["counts"]
    all_tags = list(dict.fromkeys([*BASE_TAGS, *tags, objective]))
    hub_dataset = dataset if dataset and "/" in dataset and not Path(dataset).exists() else None
    card_data = ModelCardData(
        base_model=base_model,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=all_tags,
        datasets=[hub_dataset] if hub_dataset else None,
        license=license,
        model_name=model_name if runs else None,  # YAML `model_name` only goes with `model-index` results
        eval_results=_eval_results(runs[result_run], metric=metric, dataset=dataset, task_type=task_type)
        if runs
        else None,
    )
    reproduce = f"Reproduce with:\n\n```bash\n{command}\n```" if command else ""
    if usage is None and library_name == "peft":
        usage = (
            "```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{model_name}")\n```'
        )
    return ModelCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        model_name=model_name,
        description=description
        or f"A LoRA adapter for {_model_link(base_model)} fine-tuned with the `{objective}` group objective of hf-egt. "
        "The table below is what was measured for each group; whether the objective narrowed the gap is read there "
        "(hf-egt's own experiments have not found min-max to beat plain ERM on the worst group yet).",
        metric_sentence=f"{metric.capitalize()} per group on held-out data (lower is better); each column is a model"
        + (", `eval rows` the number of evaluated rows of each group." if eval_counts else "."),
        table=_table_with_counts(runs_table(runs), eval_counts) if runs else "",
        sections=list((sections or {}).items()),
        held_out_sentence=f" ({held_out})" if held_out else "",
        settings="".join(f"- {key}: `{value}`\n" for key, value in (settings or {}).items()),
        dropped=("- Left out (not trained or not evaluated):\n" + "".join(f"  - {item}\n" for item in dropped))
        if dropped
        else "",
        plot=f"![per-group {metric}]({plot})" if plot else "",
        base_model=base_model,
        dataset=f"`{dataset}`" if dataset else "not recorded",
        group_sentence=f", groups from column `{group_column}`" if group_column else "",
        objective=objective,
        objective_description=OBJECTIVE_DESCRIPTIONS.get(objective, "custom group objective"),
        adapter_description=adapter_description or "LoRA (peft)",
        reproduce=reproduce,
        usage=usage or "",
    )


def _table_with_counts(table: str, counts: Mapping[str, int] | None) -> str:
    """``runs_table``'s markdown with an ``eval rows`` column after the group column."""
    if not counts:
        return table
    lines = []
    for index, line in enumerate(table.splitlines()):
        first, rest = line[2:].split(" |", 1)
        cell = {0: "eval rows", 1: "---:"}.get(index, str(counts.get(first, "")))
        lines.append(f"| {first} | {cell} |{rest}")
    return "\n".join(lines)


def _model_link(model: str) -> str:
    """A Markdown link to a Hub model id; a local path stays plain code."""
    if Path(model).exists() or model.count("/") != 1:
        return f"`{model}`"
    return f"[`{model}`](https://huggingface.co/{model})"


# What a pushed repo needs: the card and its plot, the reports, the split record, the adapter (peft, diffusers LoRA,
# hypernetwork) and the tokenizer. Anything else in the folder (checkpoints, optimizer states, pickled training
# arguments, logs) stays local.
UPLOAD_PATTERNS = (
    "README.md",
    "report.json",
    "report.md",
    "report.png",
    "split.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "pytorch_lora_weights.safetensors",
    *LEGACY_OBJECTIVE_STATE_NAMES,
    OBJECTIVE_STATE_NAME,
    "hypernetwork/adapter_config.json",
    "hypernetwork/adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def files_to_upload(folder: str | Path, allow_patterns: Sequence[str] = UPLOAD_PATTERNS) -> list[str]:
    """The paths (relative to ``folder``, ``/``-separated) of the files an upload of ``folder`` would send."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return list(filter_repo_objects(paths, allow_patterns=list(allow_patterns)))


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    card_text: str | None = None,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload hf-egt adapter, model card and EGT report",
    allow_patterns: Sequence[str] = UPLOAD_PATTERNS,
    revision: str | None = None,
):
    """Create ``repo_id`` if needed and upload the files of ``folder`` that match ``allow_patterns`` (the card, the
    reports and what loading needs) in one commit, writing ``card_text`` as its README.md first.

    Every file to upload is read first: one holding the token is refused (a ``ValueError`` naming it) before the repo
    is created. ``revision``: the branch to commit to (default: the main branch). Returns the
    ``huggingface_hub.CommitInfo`` of the upload.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder`: {folder} is not a folder.")
    token = resolve_hub_token(token)
    if card_text is not None:
        (folder / "README.md").write_text(card_text, encoding="utf-8")
    paths = files_to_upload(folder, allow_patterns)
    if not paths:
        raise ValueError(f"`folder`: {folder} holds no file to upload (allowed: {list(allow_patterns)}).")
    secret = token.encode()
    leaking = [path for path in paths if secret in (folder / path).read_bytes()]
    if leaking:
        raise ValueError(f"Refusing to push {folder}: {leaking} contain the Hub token.")
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    logger.info("Uploading %s (%d files) to %s", folder, len(paths), repo_url)
    return api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        commit_message=commit_message,
        allow_patterns=paths,
        revision=revision,
    )
