"""The offline LoRA recipe that the demo and the BOLD quality benchmark share: its sizes (``DemoSettings`` and the
``DEFAULT`` / ``QUICK`` presets), its adapter (``lora_config``: LoRA on the top decoder layers) and its training
(``train_adapter``: ``EGTTrainer`` with the group objective). Kept apart from the demo program so that
``benchmarks/quality_bold.py`` trains exactly the demo's adapters without importing the demo.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

from hf_egt.core.vocabulary import renamed_keywords


@dataclass
class DemoSettings:
    """Sizes of the demo; ``QUICK`` and ``DEFAULT`` below are the two presets.

    The fields are named as the options of ``hf-egt train`` / ``evaluate`` (``EGTConfig``) for the same concept, so
    ``hf-egt demo --<field>`` overrides the field of that name; ``lora_last_layers`` is the recipe's own.
    """

    dataset: str = "bold-race"  # a built-in `bold-<domain>` (the demo splits it by person)
    max_train_per_group: int = 300
    max_eval_per_group: int = 24
    eval_fraction: float = 0.25  # share of each group's people held out
    max_steps: int = 60
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    max_length: int = 32
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_last_layers: int | None = 8
    group_step_size: float = 0.3
    objective: str = "minmax"  # the objective of the demo's min-max run (the other run is ERM)
    # sentence encoder of the EGT divergence ('minilm': the offline all-MiniLM-L6-v2); None: no generation, no EGT
    feature_model: str | None = "minilm"
    divergence: str = "quantized_js"  # hf_egt.core.metrics.RECOMMENDED_TEXT_DIVERGENCE (docs/metric.md)
    # Every held-out sentence (up to max_eval_per_group) is a prompt. 100 per group would cost ~7 min of generation
    # for the 3 models on 2 cores (0.36 s per continuation measured); docs/metric.md has the numbers.
    max_prompts_per_group: int = 24
    num_prompt_words: int = 4
    max_new_tokens: int = 12
    per_device_eval_batch_size: int = 16
    seed: int = 0

    @property
    def bold_domain(self) -> str:
        """The BOLD axis of ``dataset`` (``race`` for ``bold-race``)."""
        if not self.dataset.startswith("bold-"):
            raise ValueError(f"The demo's `dataset` must be a built-in `bold-<domain>`, got {self.dataset!r}.")
        return self.dataset.removeprefix("bold-")


# Old field of DemoSettings -> its name (the same value), still accepted by `DemoSettings(...)` / `replace` with a
# warning until REMOVAL_VERSION. (`domain="race"` is now `dataset="bold-race"`, `egt=False` is `feature_model=None`.)
RENAMED_FIELDS = {
    "batch_size": "per_device_train_batch_size",
    "test_fraction": "eval_fraction",
    "minmax_objective": "objective",
    "egt_divergence": "divergence",
    "eval_batch_size": "per_device_eval_batch_size",
}
DemoSettings.__init__ = renamed_keywords(RENAMED_FIELDS, "DemoSettings")(DemoSettings.__init__)

# Old name of a demo setting -> its name (`hf-egt demo`, benchmarks/quality_bold.py, the report's settings), as on
# `hf-egt train` / `evaluate` (docs/trainer.md, "One vocabulary"); the old option names are still read, with a warning.
DEMO_RENAMED_OPTIONS = {"--minmax_objective": "--objective", "--batch_size": "--per_device_train_batch_size"}

DEFAULT = DemoSettings()
QUICK = replace(DEFAULT, max_train_per_group=150, max_eval_per_group=16, max_steps=20, feature_model=None)


def lora_config(model, settings: DemoSettings, hyper: bool = False, **hyper_fields):
    """The demo's adapter: a ``peft.LoraConfig`` on ``settings.lora_target_modules`` of the top
    ``settings.lora_last_layers`` decoder layers, or (``hyper=True``) a ``HyperLoRAConfig`` whose generated LoRA factors
    sit on exactly the same layers (selected with a regex, since ``HyperLoRAConfig`` has no ``layers_to_transform``);
    ``hyper_fields`` are further ``HyperLoRAConfig`` fields (e.g. ``match_lora_parameters=True``)."""
    if hyper_fields and not hyper:
        raise ValueError(f"{sorted(hyper_fields)} are HyperLoRAConfig fields: they need `hyper=True`.")
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
            **hyper_fields,
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
    callbacks=None,
    trainer_class=None,
    **config_overrides,
):
    """Train an adapter on a copy of ``model`` (left untouched) with ``EGTTrainer`` and the group ``objective``.

    ``settings.seed`` seeds the adapter's initialisation and the data order. ``peft_config`` defaults to
    ``lora_config(model, settings)``. With ``eval_dataset`` (a dataset or a dict of them) and ``eval_steps``, the
    per-group evaluation runs every ``eval_steps`` steps (its metrics land in ``trainer.state.log_history``).
    ``callbacks`` are further ``TrainerCallback``s; ``trainer_class`` replaces ``EGTTrainer`` (a subclass, or a
    factory taking its arguments); ``config_overrides`` are further ``EGTConfig`` fields (``group_sampling``,
    ``group_loss_estimate``, ...). Returns the trainer; ``trainer.model`` is the adapted model.
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
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=eval_steps if evaluating else max(1, settings.max_steps // 8),
        save_strategy="no",
        eval_strategy="steps" if evaluating else "no",
        eval_steps=eval_steps if evaluating else None,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        report_to=[],
        seed=settings.seed,
    )
    args = EGTConfig(**{**config, **config_overrides})
    trainer = (trainer_class or EGTTrainer)(
        model=copy.deepcopy(model),
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config or lora_config(model, settings),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


def _last_layers(model, count: int | None) -> list[int] | None:
    """Indices of the last ``count`` decoder layers (None: all). Adapting only the top layers means the backward pass
    stops there, which roughly halves a CPU training step; the forward pass still runs the whole model."""
    if count is None:
        return None
    total = model.config.num_hidden_layers
    return list(range(max(0, total - count), total))
