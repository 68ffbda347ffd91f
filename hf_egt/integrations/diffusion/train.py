"""Min-max (group DRO) LoRA fine-tuning of a diffusers model with accelerate: the loop of
``examples/train_egt_diffusion.py`` and of ``hf-egt train-diffusion``.

Modelled on diffusers' ``train_text_to_image_lora.py`` and ``train_unconditional.py``: argparse, an ``Accelerator``
and a plain loop. What differs is the loss: each optimizer step ("window" of ``--gradient_accumulation_steps``
micro-batches) is prefetched, its noise and timesteps are drawn from one generator seeded by (seed, step, process),
and the per-example denoising losses are combined by the group objective (``--objective``), kept per noise-level
bucket (``--noise_buckets``). Results then depend neither on how a window is split into micro-batches nor on a
resume from a checkpoint.

With ``--hyper`` the trained module is a :class:`~hf_egt.integrations.hyper.HyperLoRAModel` over the frozen UNet: a
hypernetwork that generates the LoRA factors from a set of images (each micro-batch's clean images while training),
with the optional PLE self-consumption penalty (``--ple_weight``, images sampled from the model). The output folder
then holds the plain LoRA of one fixed context (``--hyper_context_size`` training images), loadable without hf_egt, and
the hypernetwork itself under ``hypernetwork/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hf_egt.core.objective import LOSS_ESTIMATES, OBJECTIVE_MODES
from hf_egt.core.resume import (
    GROUP_OBJECTIVE_RECORD_FIELDS,
    RecordField,
    check_run_record,
    dataset_entry,
    resolved_model_path,
    write_run_record,
)
from hf_egt.core.samplers import GROUP_SAMPLINGS, group_sampler
from hf_egt.core.serialization import check_checkpoint_files
from hf_egt.core.vocabulary import (
    OBJECTIVE_STATE_NAME,
    add_renamed_options,
    check_required_options,
    objective_state_path,
    renamed_attribute,
)
from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective
from hf_egt.integrations.diffusion.data import (
    DIGITS_DATASET_NAME,
    check_columns,
    collate,
    dataset_sha256,
    group_labels_of,
    load_image_dataset,
    make_transform,
)
from hf_egt.integrations.diffusion.lora import (
    add_unet_lora,
    check_lora_targets,
    lora_parameters,
    save_hyper_unet_lora,
    save_unet_lora,
    unet_lora_config,
)
from hf_egt.integrations.diffusion.losses import denoising_target, min_snr_weights, noise_buckets, per_example_mse
from hf_egt.integrations.diffusion.models import (
    denoiser_conditioning,
    denoiser_prediction,
    latent_distribution,
    load_components,
    tokenize_captions,
)
from hf_egt.integrations.diffusion.sampling import image_grid, sample_stable_diffusion, sample_unet2d
from hf_egt.integrations.hyper.config import POSITIVE_INTEGERS, add_config_arguments, config_values, option_name

logger = logging.getLogger(__name__)

HYPERNETWORK_FOLDER = "hypernetwork"
# The HyperLoRAConfig fields the script exposes, declared from the config (type, default, help, choices).
HYPER_CONFIG_FIELDS = (
    "ple_weight",
    "ple_every",
    "context_dim",
    "set_encoder_hidden",
    "hidden_size",
    "head_rank",
    "match_lora_parameters",
    "unet_pool_size",
)
# Options that only mean something with --hyper: refused without it rather than silently ignored.
HYPER_OPTIONS = (*(option_name(name) for name in HYPER_CONFIG_FIELDS), "ple_inference_steps", "hyper_context_size")
# The sizes and counts among them, each >= 1 (the config's own positive fields, and the script's two).
POSITIVE_HYPER_OPTIONS = (
    *(option_name(name) for name in HYPER_CONFIG_FIELDS if name in POSITIVE_INTEGERS),
    "ple_inference_steps",
    "hyper_context_size",
)


# Old option -> the name `hf-egt train` (EGTConfig) uses for the same concept; the old ones go in REMOVAL_VERSION.
RENAMED_OPTIONS = {
    "--pretrained_model_name_or_path": "--model_name_or_path",
    "--dataset_name": "--dataset",
    "--dataset_split": "--train_split",
    "--max_train_steps": "--max_steps",
    "--rank": "--lora_r",
    "--dro_step_size": "--group_step_size",
    "--dro_adjustment": "--group_adjustment",
    "--ema_decay": "--group_ema_decay",
    "--ema_temperature": "--group_temperature",
    "--train_batch_size": "--per_device_train_batch_size",
    "--lr_scheduler": "--lr_scheduler_type",
    "--lr_warmup_steps": "--warmup_steps",
    "--adam_weight_decay": "--weight_decay",
    "--checkpointing_steps": "--save_steps",
    "--checkpoints_total_limit": "--save_total_limit",
}


def build_parser() -> argparse.ArgumentParser:
    """The script's options: the names and defaults of `hf-egt train` for every shared concept (docs/trainer.md,
    "One vocabulary"), the group objective's first; the old spellings of ``RENAMED_OPTIONS`` warn."""
    from diffusers.optimization import SchedulerType

    parser = argparse.ArgumentParser(
        prog="hf-egt train-diffusion",
        description="Min-max (group DRO) LoRA fine-tuning of a diffusers model.",
        allow_abbrev=False,
    )
    group = parser.add_argument_group("group objective").add_argument
    group("--objective", choices=OBJECTIVE_MODES, default="minmax", help="Group objective.")
    group("--group_column", default="group", help="Sensitive attribute; the class label of a class-conditional UNet.")
    group("--group_step_size", type=float, default=0.01, help="Exponentiated-gradient step size (minmax).")
    group(
        "--group_adjustment",
        type=float,
        default=0.0,
        help="Generalisation adjustment C: C / sqrt(n_g) is added to "
        "each group's loss in the weight update (Sagawa et al.), favouring small groups.",
    )
    group(
        "--group_sampling",
        choices=GROUP_SAMPLINGS,
        default="natural",
        help="natural proportions, balanced (weighted sampler N / n_g with replacement, group_DRO's "
        "--reweight_groups), temperature (p_g ∝ n_g ** --group_sampling_exponent) or stratified (every optimizer "
        "step holds every group); seeded with --seed and the epoch.",
    )
    group(
        "--group_sampling_exponent",
        type=float,
        default=0.5,
        help="alpha of temperature sampling (p_g ∝ n_g ** alpha): 1 natural, 0 balanced.",
    )
    group(
        "--group_loss_estimate",
        choices=LOSS_ESTIMATES,
        default="batch",
        help="Group losses seen by the minmax update: batch (absent groups 0, the reference), last (absent groups keep "
        "their last value, DoReMi) or ema (--group_ema_decay over present groups, group_DRO's --btl).",
    )
    group("--group_weight_floor", type=float, default=0.0, help="DoReMi's c: weights mixed (1 - c) q + c / k.")
    group("--group_ema_decay", type=float, default=0.9, help="Decay of the group-loss EMA (ema).")
    group("--group_temperature", type=float, default=1.0, help="Softmax temperature on the group-loss EMA (ema).")
    group(
        "--noise_buckets",
        type=int,
        default=1,
        help="Keep the objective per bucket of timesteps (worst group at each noise level).",
    )
    add = parser.add_argument
    add("--model_name_or_path", required=True, help="Hub id or folder of a UNet2DModel or SD pipeline.")
    add("--revision", default=None)
    add("--dataset", required=True, help=f"Hub dataset id, an image folder, or {DIGITS_DATASET_NAME!r}.")
    add("--train_split", default="train", help="Training split of a Hub dataset.")
    add("--cache_dir", default=None)
    add("--image_column", default="image")
    add("--caption_column", default=None, help="Captions (required for Stable Diffusion).")
    add("--resolution", type=int, default=64)
    add("--center_crop", action=argparse.BooleanOptionalAction, default=True)
    add("--per_device_train_batch_size", type=int, default=16, help="Images per micro-batch and process.")
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--max_steps", type=int, default=1000, help="Optimizer steps.")
    add("--learning_rate", type=float, default=1e-4)
    add(
        "--lr_scheduler_type",
        default="constant",
        choices=[scheduler.value for scheduler in SchedulerType],
        help="Learning-rate schedule (diffusers.optimization.get_scheduler).",
    )
    add("--warmup_steps", type=int, default=0)
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--weight_decay", type=float, default=1e-2, help="AdamW weight decay.")
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0)
    add("--lora_r", type=int, default=8, help="LoRA rank.")
    add("--lora_alpha", type=float, default=16.0, help="LoRA alpha.")
    add("--lora_conv", action="store_true", help="Also adapt the ResNet convolutions (conv1, conv2).")
    add("--snr_gamma", type=float, default=None, help="Min-SNR weighting of the per-example losses.")
    add("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    add("--dataloader_num_workers", type=int, default=0)
    add("--save_steps", type=int, default=500, help="Save a checkpoint every N steps (0: never).")
    add("--save_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    add("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' in --output_dir.")
    add(
        "--overwrite_output_dir",
        action="store_true",
        help="Start a new run in an --output_dir that holds checkpoints (refused otherwise); they are removed once "
        "every check has passed, just before the first step.",
    )
    add(
        "--resume_allow_changes",
        nargs="+",
        default=[],
        help="With --resume_from_checkpoint: options whose value may differ from the checkpoint's run (e.g. dataset, "
        "group_step_size); any other difference is refused before the model loads.",
    )
    add("--validation_steps", type=int, default=None, help="Save a per-group image grid every N steps (and at end).")
    add("--num_validation_images", type=int, default=4, help="Images per group in the validation grid.")
    add("--validation_inference_steps", type=int, default=25)
    add("--report_to", default="none", help="accelerate tracker: tensorboard, wandb, ... ('none': no tracker).")
    add("--output_dir", default="egt-diffusion-lora")
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None)
    add("--seed", type=int, default=42)
    hyper = parser.add_argument_group("hypernetwork (--hyper)")
    hyper.add_argument(
        "--hyper",
        action="store_true",
        help="Train a HyperLoRAModel over the frozen UNet: a hypernetwork generating the LoRA factors (of --lora_r, on "
        "the same layers) from a set of images, the micro-batch's clean images while training.",
    )
    add_config_arguments(hyper, HYPER_CONFIG_FIELDS)
    hyper.add_argument("--ple_inference_steps", type=int, default=10, help="DDIM steps to sample the PLE batch Y.")
    hyper.add_argument(
        "--hyper_context_size",
        type=int,
        default=1024,
        help="Training images (a seeded random subset) whose encoding is the context of the exported LoRA.",
    )
    add_renamed_options(parser, RENAMED_OPTIONS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_required_options(parser, args)
    if args.report_to == "none":
        args.report_to = None
    if args.per_device_train_batch_size < 1 or args.gradient_accumulation_steps < 1 or args.max_steps < 1:
        parser.error("--per_device_train_batch_size, --gradient_accumulation_steps and --max_steps must be >= 1.")
    if args.noise_buckets < 1:
        parser.error(f"--noise_buckets must be >= 1, got {args.noise_buckets}.")
    if not 0.0 <= args.group_sampling_exponent <= 1.0:
        parser.error(
            f"--group_sampling_exponent must be in [0, 1] (0: balanced, 1: natural), got "
            f"{args.group_sampling_exponent}."
        )
    # what AdamW and the scheduler would reject only after the model is loaded
    for name, valid, rule in (
        ("learning_rate", args.learning_rate >= 0, ">= 0"),
        ("weight_decay", args.weight_decay >= 0, ">= 0"),
        ("adam_beta1", 0 <= args.adam_beta1 < 1, "in [0, 1)"),
        ("adam_beta2", 0 <= args.adam_beta2 < 1, "in [0, 1)"),
        ("adam_epsilon", args.adam_epsilon >= 0, ">= 0"),
        ("warmup_steps", args.warmup_steps >= 0, ">= 0"),
    ):
        if not valid:
            raise ValueError(f"`--{name}` must be {rule}, got {getattr(args, name)}.")
    if args.resume_allow_changes and not args.resume_from_checkpoint:
        raise ValueError("`--resume_allow_changes` only applies with `--resume_from_checkpoint`.")
    if args.report_to is not None:
        check_report_to(args.report_to)
    if not args.hyper:
        changed = [name for name in HYPER_OPTIONS if getattr(args, name) != parser.get_default(name)]
        if changed:
            parser.error(f"--{changed[0]} only applies to a hypernetwork: add --hyper (or drop --{changed[0]}).")
    if args.ple_weight < 0:
        parser.error(f"--ple_weight must be >= 0, got {args.ple_weight}.")
    for name in POSITIVE_HYPER_OPTIONS:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    return args


def check_report_to(report_to: str) -> None:
    """``--report_to`` must name an accelerate tracker that is installed (``Accelerator`` would otherwise log nothing,
    with a warning only, or fail with an error that does not name the option)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    valid = [tracker.value for tracker in LoggerType]
    if report_to not in valid:
        raise ValueError(f"`--report_to`: unknown tracker {report_to!r}; valid: {valid}, none.")
    installed = [str(getattr(tracker, "value", tracker)) for tracker in get_available_trackers()]
    if report_to != "all" and report_to not in installed or not installed:
        raise ValueError(
            f"`--report_to`: {report_to!r} is not installed in this environment (installed trackers: "
            f"{installed or 'none'}); install it, or pass `--report_to none`."
        )


@dataclass
class TrainResult:
    """What ``main`` returns: the trained (unwrapped) model, the group objective and the number of optimizer steps."""

    model: Any
    group_objective: NoiseLevelGroupObjective
    global_step: int
    kind: str
    log_history: list[dict] = field(default_factory=list)

    # `group_objective` is the objective object, `args.objective` its name; the old spelling warns.
    objective = renamed_attribute("objective", "group_objective", "TrainResult")


def window_generator(seed: int, step: int, process_index: int) -> torch.Generator:
    """The generator of one optimizer step's noise: a function of (seed, step, process) only, so resumes and
    different micro-batch splits draw the same noise."""
    state = np.random.SeedSequence([seed, step, process_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_window_inputs(components, window: list[dict], num_buckets: int, generator: torch.Generator, dtype):
    """Clean and noisy latents (in ``dtype``), timesteps, float targets and noise buckets of every micro-batch of a
    window, drawn in one go from ``generator``."""
    scheduler = components.noise_scheduler
    num_train_timesteps = scheduler.config.num_train_timesteps
    distributions = [latent_distribution(components, batch["pixel_values"].to(dtype)) for batch in window]
    mean = torch.cat([m.float() for m, _ in distributions])
    latents = mean
    if distributions[0][1] is not None:
        std = torch.cat([s.float() for _, s in distributions])
        latents = mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    timesteps = torch.randint(0, num_train_timesteps, (len(mean),), generator=generator).to(mean.device)
    noisy = scheduler.add_noise(latents, noise, timesteps).to(dtype)
    target = denoising_target(scheduler, latents, noise, timesteps)
    buckets = noise_buckets(timesteps, num_train_timesteps, num_buckets)
    sizes = [len(batch["group_ids"]) for batch in window]
    parts = [t.split(sizes) for t in (latents.to(dtype), noisy, timesteps, target, buckets)]
    return [dict(zip(("latents", "noisy", "timesteps", "target", "buckets"), values)) for values in zip(*parts)]


def hyper_prediction(components, model, x: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ``HyperLoRAModel``'s prediction whose LoRA factors are generated from the micro-batch's clean latents, and
    its PLE term (``None`` without PLE). The conditioning also conditions the PLE sampler."""
    conditioning = denoiser_conditioning(components, batch)
    output = model(x["noisy"], x["timesteps"], **conditioning, context_set={"sample": x["latents"], **conditioning})
    return output.sample, output.get("ple")


def accumulate_window(
    accelerator, components, model, objective, window, inputs, snr_gamma=None, hyper: bool = False
) -> dict[str, float]:
    """Forward and backward of one optimizer step's micro-batches under the group objective; returns its ``loss``
    (and, for a hypernetwork trained with PLE, the window's mean ``ple`` term, already weighted and in ``loss``).

    The objective's weights are fixed for the window (``begin_window``); each micro-batch adds its share, so the
    accumulated gradient is that of ``sum_k (n_k / n) sum_g q_kg L_kg`` over the whole window and all processes.
    The PLE term is a per-micro-batch value: it is averaged over the window. Gradients are synchronised once, on the
    last micro-batch.
    """
    objective.begin_window([batch["group_ids"] for batch in window], [x["buckets"] for x in inputs])
    total, ple_total = 0.0, None
    for index, (batch, x) in enumerate(zip(window, inputs)):
        with accelerator.no_sync(model) if index < len(window) - 1 else nullcontext():
            if hyper:
                prediction, ple = hyper_prediction(components, model, x, batch)
            else:
                prediction, ple = denoiser_prediction(components, model, x["noisy"], x["timesteps"], batch), None
            losses = per_example_mse(prediction, x["target"])
            if snr_gamma is not None:
                losses = losses * min_snr_weights(components.noise_scheduler, x["timesteps"], snr_gamma)
            loss = objective.window_loss(losses, batch["group_ids"], x["buckets"])
            if ple is not None:
                ple = ple / len(window)
                ple_total = (ple_total or 0.0) + ple.item()
                loss = loss + ple
            # The shares add up to the window's loss; DDP averages gradients over processes.
            accelerator.backward(loss * accelerator.num_processes)
            total += loss.item()
    return {"loss": total} if ple_total is None else {"loss": total, "ple": ple_total}


def build_hyper_model(components, lora_config, args):
    """A ``HyperLoRAModel`` generating the LoRA of ``lora_config`` on the frozen UNet, with a DDIM sampler for PLE."""
    from diffusers import DDIMScheduler

    from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel
    from hf_egt.integrations.hyper.sampling import DiffusionSampler

    check_lora_targets(components.unet, lora_config)
    config = HyperLoRAConfig(
        r=lora_config.r,
        lora_alpha=lora_config.lora_alpha,
        target_modules=sorted(lora_config.target_modules),
        set_encoder_input="unet_pooled",
        base_model_name_or_path=args.model_name_or_path,
        **config_values(args, HYPER_CONFIG_FIELDS),
    )
    sampler = None
    if args.ple_weight > 0:
        sampler = DiffusionSampler(
            DDIMScheduler.from_config(components.noise_scheduler.config), args.ple_inference_steps
        )
    return HyperLoRAModel(components.unet, config, ple_sampler=sampler)


@torch.no_grad()
def fix_hyper_context(components, model, dataset, args, device, dtype) -> torch.Tensor:
    """Fix the context of a ``HyperLoRAModel`` to the encoding of ``--hyper_context_size`` training images (a random
    subset seeded by ``--seed``, taken as one set; latents without noise for SD). Returns the context."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    indices = order[: args.hyper_context_size].tolist()
    embeddings = []
    for start in range(0, len(indices), args.per_device_train_batch_size):
        batch = collate([dataset[i] for i in indices[start : start + args.per_device_train_batch_size]])
        latents, _ = latent_distribution(components, batch["pixel_values"].to(device, dtype))
        embeddings.append(model.embed(sample=latents.to(dtype)))
    return model.set_context(context=model.hypernetwork.set_encoder(torch.cat(embeddings)))


def batches_from(accelerator, dataloader, consumed: int):
    """Endless stream of batches, starting after ``consumed`` batches (epochs reshuffle with a seeded sampler)."""
    epoch, skip = divmod(consumed, len(dataloader))
    while True:
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        loader.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        yield from loader
        epoch, skip = epoch + 1, 0


def resolve_checkpoint(resume_from_checkpoint: str, output_dir: str) -> str | None:
    """The checkpoint to resume from: ``latest`` (or ``true``) is the newest in ``output_dir`` (``None`` when there is
    none: a new run); a path must be a checkpoint folder holding the objective state (a ``FileNotFoundError``
    naming it otherwise, raised before anything is loaded)."""
    if resume_from_checkpoint.lower() not in ("latest", "true"):
        objective_path = objective_state_path(resume_from_checkpoint, warn=False)
        if not os.path.isfile(objective_path):
            raise FileNotFoundError(
                f"`--resume_from_checkpoint`: {objective_path} does not exist; pass a `checkpoint-<step>` folder of "
                f"this script, or `latest` for the newest one in `--output_dir`."
            )
        check_checkpoint_files(resume_from_checkpoint, "--resume_from_checkpoint")
        return resume_from_checkpoint
    folders = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-")] if os.path.isdir(output_dir) else []
    if not folders:
        return None
    latest = os.path.join(output_dir, max(folders, key=lambda d: int(d.split("-")[1])))
    check_checkpoint_files(latest, "--resume_from_checkpoint")
    return latest


def check_output_dir(args: argparse.Namespace) -> None:
    """A new run (no ``--resume_from_checkpoint``) refuses an ``--output_dir`` holding checkpoints unless
    ``--overwrite_output_dir``: they belong to another run and would be mixed with this one's."""
    if args.resume_from_checkpoint or args.overwrite_output_dir or not os.path.isdir(args.output_dir):
        return
    existing = sorted(d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-"))
    if existing:
        raise ValueError(
            f"`--output_dir`: {args.output_dir!r} already holds checkpoints of a run ({', '.join(existing[:5])}); "
            "pass `--resume_from_checkpoint latest` to continue it, `--overwrite_output_dir` to replace it, or "
            "another `--output_dir`."
        )


def save_checkpoint(accelerator, objective, args, global_step: int, record: dict | None = None) -> None:
    """``accelerator.save_state`` plus the objective's safetensors file and the run's compatibility ``record``
    (``hf_egt.core.resume``); keep at most ``save_total_limit``."""
    if args.save_total_limit is not None and accelerator.is_main_process:
        folders = sorted(
            (d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1])
        )
        for folder in folders[: max(0, len(folders) - args.save_total_limit + 1)]:
            shutil.rmtree(os.path.join(args.output_dir, folder))
    path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    accelerator.save_state(path)  # a HyperLoRAModel's state dict is its hypernetwork only
    if accelerator.is_main_process:
        objective.save(os.path.join(path, OBJECTIVE_STATE_NAME))
        if record is not None:
            write_run_record(record, path)


# What a resumed run must share with the run that saved the checkpoint: record key -> (option, may change on request).
RECORD_FIELDS = {
    "model_name_or_path": ("--model_name_or_path", True),
    "dataset": ("--dataset", True),
    "groups": ("--group_column", False),
    "lora_r": ("--lora_r", False),
    "lora_conv": ("--lora_conv", False),
    "lora_alpha": ("--lora_alpha", True),
    "hyper": ("--hyper", False),
    "objective": ("--objective", False),
    "noise_buckets": ("--noise_buckets", False),
    **GROUP_OBJECTIVE_RECORD_FIELDS,
    "resolution": ("--resolution", True),
}
# HyperLoRA options that set the shape of the saved hypernetwork (PLE's may change on request).
HYPER_SHAPE_FIELDS = ("context_dim", "set_encoder_hidden", "hidden_size", "head_rank", "match_lora_parameters")


def run_record(args: argparse.Namespace, dataset, group_labels: list) -> tuple[dict, dict]:
    """This run's compatibility record (``hf_egt.core.resume``) and its fields: the data (name and a content hash of
    the training images, groups and captions), the groups, the LoRA / hypernetwork shape and the objective settings."""
    columns = [args.image_column, args.group_column] + ([args.caption_column] if args.caption_column else [])
    record = {
        "model_name_or_path": resolved_model_path(args.model_name_or_path),
        "dataset": dataset_entry(args.dataset, dataset_sha256(dataset, columns)),
        "groups": [str(label) for label in group_labels],
    }
    record.update({key: getattr(args, key) for key in RECORD_FIELDS if key not in record})
    fields = {key: RecordField(option, may_change) for key, (option, may_change) in RECORD_FIELDS.items()}
    if args.hyper:
        for name in HYPER_CONFIG_FIELDS:
            record[f"hyper_{name}"] = getattr(args, option_name(name))
            fields[f"hyper_{name}"] = RecordField(f"--{option_name(name)}", name not in HYPER_SHAPE_FIELDS)
    return record, fields


def validation_rows(components, model, group_labels, prompts, args, device) -> list[torch.Tensor]:
    """One row of ``num_validation_images`` samples per group (one row for an unconditional UNet)."""
    generator = torch.Generator().manual_seed(args.seed)
    n = args.num_validation_images
    if components.kind == "stable-diffusion":
        return [
            sample_stable_diffusion(
                components, model, [prompts[g]] * n, args.validation_inference_steps, generator, device
            )
            for g in range(len(group_labels))
        ]
    config = components.noise_scheduler.config
    if not components.class_conditional:
        return [sample_unet2d(model, config, n, None, args.validation_inference_steps, generator, device)]
    return [
        sample_unet2d(model, config, n, torch.full((n,), g), args.validation_inference_steps, generator, device)
        for g in range(len(group_labels))
    ]


def log_validation(accelerator, components, model, group_labels, prompts, args, global_step: int) -> str:
    """Save the per-group grid as PNG under ``output_dir/validation`` and log it to the configured trackers."""
    was_training = model.training
    model.eval()
    grid = image_grid(validation_rows(components, model, group_labels, prompts, args, accelerator.device))
    model.train(was_training)
    path = os.path.join(args.output_dir, "validation", f"step-{global_step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(
                "validation", np.asarray(grid), global_step, dataformats="HW" if grid.mode == "L" else "HWC"
            )
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid, caption=f"rows: {group_labels}")}, step=global_step)
    return path


def model_card(args, kind: str, objective: NoiseLevelGroupObjective, context_size: int | None = None) -> str:
    """The card (``hf_egt.integrations.hub.build_model_card``): base model, data, objective and the final group weights
    (``context_size``: the number of training images a hypernetwork's exported LoRA was generated from)."""
    from hf_egt.integrations.hub import build_model_card

    weights = objective.weights.mean(0).tolist()
    rows = "\n".join(f"| {g} | {w:.4f} |" for g, w in zip(objective.groups, weights))
    stable_diffusion = kind == "stable-diffusion"
    repo = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
    base = resolved_model_path(args.model_name_or_path)
    if stable_diffusion:
        load = (
            "from diffusers import StableDiffusionPipeline\n\n"
            f'pipeline = StableDiffusionPipeline.from_pretrained("{base}")\n'
            f'pipeline.load_lora_weights("{repo}")'
        )
    else:  # a UNet2DModel repo, or a pipeline folder holding one under unet/
        subfolder = ', subfolder="unet"' if os.path.isfile(os.path.join(base, "model_index.json")) else ""
        load = (
            "from diffusers import UNet2DModel\nfrom peft import PeftModel\n\n"
            f'unet = UNet2DModel.from_pretrained("{base}"{subfolder})\n'
            f'model = PeftModel.from_pretrained(unet, "{repo}")'
        )
    description = (
        f"LoRA (rank {args.lora_r}) on `{args.model_name_or_path}`, trained on `{args.dataset}` for "
        f"{objective.step} steps with the `{args.objective}` group objective over `{args.group_column}` "
        f"({objective.num_buckets} noise-level bucket(s)). Load it as shown under Use."
    )
    if args.hyper:
        description += "\n\n" + hyper_card_text(args, context_size).strip()
    card = build_model_card(
        base_model=args.model_name_or_path,
        runs={},
        objective=args.objective,
        model_name=repo,
        dataset=args.dataset,
        group_column=args.group_column,
        library_name="diffusers" if stable_diffusion else "peft",
        pipeline_tag="text-to-image" if stable_diffusion else "unconditional-image-generation",
        adapter_description=f"LoRA (rank {args.lora_r})",
        description=description,
        usage=f"```python\n{load}\n```",
        settings={"steps": objective.step, "noise-level buckets": objective.num_buckets},
        sections={"Group weights": f"| group | final weight (mean over noise buckets) |\n|---|---|\n{rows}"},
    )
    return str(card)


def hyper_card_text(args, context_size: int | None) -> str:
    ple = f" with the PLE self-consumption penalty (λ = {args.ple_weight})" if args.ple_weight > 0 else ""
    return (
        f"The LoRA weights were generated by a hypernetwork (hf-egt `HyperLoRAModel`){ple} from a set of "
        f"{context_size or args.hyper_context_size} training images. The hypernetwork is in `{HYPERNETWORK_FOLDER}/` "
        "(`HyperLoRAModel.from_pretrained(unet, folder)`, needs hf-egt); the adapter above does not.\n\n"
    )


def push_to_hub(folder: str, repo_id: str, card_text: str) -> None:
    """Upload ``folder`` with its card (``hf_egt.integrations.hub.push_folder_to_hub``)."""
    from hf_egt.integrations.hub import push_folder_to_hub

    push_folder_to_hub(folder, repo_id, card_text)


def main(args: argparse.Namespace) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    check_output_dir(args)
    if args.push_to_hub:  # a missing token or an unreachable Hub fails now, not after training
        from hf_egt.integrations.hub import check_hub_reachable, resolve_hub_token

        check_hub_reachable(resolve_hub_token())
    resume_path = (
        resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None
    )
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    # Data and group objective first: both are cheap, and a checkpoint saved for other groups must fail before the
    # model is loaded. Images, group ids (the class label of a class-conditional UNet) and, for SD, captions.
    dataset = load_image_dataset(args.dataset, args.train_split, args.cache_dir)
    check_columns(dataset.column_names, image_column=args.image_column, group_column=args.group_column)
    group_labels = group_labels_of(dataset, args.group_column)
    group_ids = {label: index for index, label in enumerate(group_labels)}
    train_group_ids = [group_ids[label] for label in dataset[args.group_column]]
    # Training-set group sizes: the adjustment C / sqrt(n_g) of every group, as the reference (group_DRO).
    sizes = torch.bincount(torch.tensor(train_group_ids), minlength=len(group_labels)).tolist()
    objective = NoiseLevelGroupObjective(
        args.noise_buckets, groups=group_labels, objective=args.objective, group_step_size=args.group_step_size,
        group_adjustment=args.group_adjustment, group_ema_decay=args.group_ema_decay,
        group_temperature=args.group_temperature, group_loss_estimate=args.group_loss_estimate,
        group_weight_floor=args.group_weight_floor,
        group_sizes=sizes if min(sizes) > 0 else None,
    )  # fmt: skip
    record, record_fields = run_record(args, dataset, group_labels)
    if resume_path is not None:  # groups and buckets checked before the model is prepared or any state restored
        objective_path = objective_state_path(resume_path, "--resume_from_checkpoint")
        try:
            objective.load(objective_path)
        except ValueError as error:
            raise ValueError(f"`--resume_from_checkpoint`: {objective_path}: {error}") from error
        check_run_record(resume_path, record, record_fields, args.resume_allow_changes, "--resume_from_checkpoint")

    # Model: frozen base in the training precision, LoRA parameters trained in float32.
    components = load_components(args.model_name_or_path, revision=args.revision)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for module in (components.unet, components.vae, components.text_encoder):
        if module is not None:
            module.requires_grad_(False).to(accelerator.device)
            if weight_dtype != torch.float32:
                module.to(dtype=weight_dtype)
    lora_config = unet_lora_config(args.lora_r, args.lora_alpha, args.lora_conv)
    if args.hyper:
        model = build_hyper_model(components, lora_config, args)
    else:
        model = add_unet_lora(components.unet, lora_config)
    if weight_dtype != torch.float32:
        cast_training_params(model, dtype=torch.float32)  # LoRA weights and their Adam states stay in float32

    if components.kind == "stable-diffusion":
        if args.caption_column is None:
            raise ValueError("`--caption_column` is required to fine-tune a Stable Diffusion model.")
        check_columns(dataset.column_names, caption_column=args.caption_column)
    if components.class_conditional and components.unet.config.num_class_embeds < len(group_labels):
        raise ValueError(
            f"`--group_column`={args.group_column!r} has {len(group_labels)} groups but the UNet has only "
            f"{components.unet.config.num_class_embeds} class embeddings (`num_class_embeds`)."
        )
    prompts = {}
    if components.kind == "stable-diffusion":
        for caption, group in zip(dataset[args.caption_column], dataset[args.group_column]):
            prompts.setdefault(group_ids[group], caption)
    tokenize = (lambda captions: tokenize_captions(components.tokenizer, captions)) if components.tokenizer else None
    dataset = dataset.with_transform(
        make_transform(
            args.image_column,
            args.group_column,
            args.resolution,
            components.image_channels,
            group_ids,
            tokenize,
            args.caption_column,
            args.center_crop,
        )  # fmt: skip
    )
    sampler = group_sampler(
        args.group_sampling, train_group_ids, len(group_labels), seed=args.seed,
        step_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes,
        exponent=args.group_sampling_exponent,
    )  # fmt: skip
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.per_device_train_batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=collate, num_workers=args.dataloader_num_workers,
    )  # fmt: skip

    optimizer = torch.optim.AdamW(
        lora_parameters(model), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.weight_decay, eps=args.adam_epsilon,
    )  # fmt: skip
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )  # fmt: skip
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    global_step = 0
    if args.resume_from_checkpoint:
        path = resume_path
        if path is None:
            logger.info("No checkpoint in %s; starting a new run.", args.output_dir)
        else:
            accelerator.load_state(path)  # the objective's state was restored above
            global_step = int(os.path.basename(os.path.normpath(path)).split("-")[1])
            logger.info("Resumed from %s at step %d.", path, global_step)
    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers("egt-diffusion", config={k: v for k, v in vars(args).items() if v is not None})

    if args.overwrite_output_dir and resume_path is None and accelerator.is_main_process:
        # every check has passed and the model is ready: only now are the earlier run's checkpoints removed
        for folder in sorted(d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-")):
            logger.warning("--overwrite_output_dir: removing %s of an earlier run.", folder)
            shutil.rmtree(os.path.join(args.output_dir, folder))
    accelerator.wait_for_everyone()

    accumulation = args.gradient_accumulation_steps
    batches = batches_from(accelerator, dataloader, global_step * accumulation)
    trainable = lora_parameters(model)
    progress = tqdm(
        range(args.max_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    log_history = []

    def sampling_model():
        """What validation samples from: the model, or a hypernetwork's peft model with its context fixed."""
        unwrapped = accelerator.unwrap_model(model)
        if not args.hyper:
            return unwrapped
        fix_hyper_context(components, unwrapped, dataset, args, accelerator.device, weight_dtype)
        return unwrapped.peft_model

    model.train()
    while global_step < args.max_steps:
        window = [next(batches) for _ in range(accumulation)]
        generator = window_generator(args.seed, global_step, accelerator.process_index)
        inputs = draw_window_inputs(components, window, args.noise_buckets, generator, weight_dtype)
        window_stats = accumulate_window(
            accelerator, components, model, objective, window, inputs, args.snr_gamma, hyper=args.hyper
        )
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats = objective.end_window()
        global_step += 1
        progress.update(1)
        worst = stats["weights"].mean(0).argmax().item()
        progress.set_postfix(**window_stats, top_weight_group=objective.groups[worst])
        logs = {**window_stats, "lr": lr_scheduler.get_last_lr()[0]}
        for g, label in enumerate(objective.groups):
            logs[f"group_loss/{label}"] = stats["group_losses"][:, g].mean().item()
            logs[f"group_weight/{label}"] = stats["weights"][:, g].mean().item()
            logs[f"group_count/{label}"] = stats["group_counts"][:, g].sum().item()
        log_history.append({"step": global_step, **logs})
        if args.report_to:
            accelerator.log(logs, step=global_step)
        if args.save_steps and global_step % args.save_steps == 0:
            save_checkpoint(accelerator, objective, args, global_step, record)
        if accelerator.is_main_process and args.validation_steps and global_step % args.validation_steps == 0:
            log_validation(accelerator, components, sampling_model(), group_labels, prompts, args, global_step)
    progress.close()

    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    if args.hyper:
        # The exported LoRA is the one generated for a fixed set of training images (every process fixes it).
        model.eval()
        fix_hyper_context(components, model, dataset, args, accelerator.device, weight_dtype)
    if accelerator.is_main_process:
        if args.hyper:
            save_hyper_unet_lora(model, components.kind, args.output_dir)
            model.save_pretrained(os.path.join(args.output_dir, HYPERNETWORK_FOLDER))
        else:
            if components.kind == "unet2d":  # absolute for a local folder: the adapter loads from anywhere
                model.peft_config["default"].base_model_name_or_path = record["model_name_or_path"]
            save_unet_lora(model, components.kind, args.output_dir)
        objective.save(os.path.join(args.output_dir, OBJECTIVE_STATE_NAME))
        if args.validation_steps:
            validation_model = model.peft_model if args.hyper else model
            log_validation(accelerator, components, validation_model, group_labels, prompts, args, global_step)
        context_size = min(args.hyper_context_size, len(dataset)) if args.hyper else None
        card = model_card(args, components.kind, objective, context_size)
        with open(os.path.join(args.output_dir, "README.md"), "w") as handle:
            handle.write(card)
        if args.push_to_hub:
            push_to_hub(args.output_dir, args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)), card)
    accelerator.end_training()
    return TrainResult(
        model=model,
        group_objective=objective,
        global_step=global_step,
        kind=components.kind,
        log_history=log_history,
    )
