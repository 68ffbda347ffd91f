"""Min-max (group DRO) LoRA fine-tuning of a diffusers model with accelerate: the training loop, as library code.

:func:`train` takes the options of ``hf-egt train-diffusion`` (any object with its attributes, e.g. what
``hf_egt.apps.train_diffusion.parse_args`` returns; the command adds the output-folder and resume policy, the card and
the push around it). Modelled on diffusers' ``train_text_to_image_lora.py`` and ``train_unconditional.py``: an
``Accelerator`` and a plain loop. What differs is the loss: each optimizer step ("window" of
``gradient_accumulation_steps`` micro-batches) is prefetched, its noise and timesteps are drawn from one generator
seeded by (seed, step, process), and the per-example denoising losses are combined by the group objective
(``objective``), kept per noise-level bucket (``noise_buckets``). Results then depend neither on how a window is split
into micro-batches nor on a resume from a checkpoint (:func:`save_checkpoint`, :func:`check_checkpoint`, and the
run's compatibility record :func:`run_record`).

With ``hyper`` the trained module is a :class:`~hf_egt.integrations.hyper.HyperLoRAModel` over the frozen UNet; the
output folder then holds the plain LoRA of one fixed context (``hyper_context_size`` training images, the context
set) and the hypernetwork itself under ``hypernetwork/``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hf_egt.core.resume import (
    GROUP_OBJECTIVE_RECORD_FIELDS,
    RecordField,
    check_run_record,
    checkpoints_of,
    dataset_entry,
    recorded_sampling_exponent,
    resolved_model_path,
    write_run_record,
)
from hf_egt.core.samplers import group_sampler
from hf_egt.core.serialization import check_checkpoint_files
from hf_egt.core.vocabulary import OBJECTIVE_STATE_NAME, objective_state_path, renamed_attribute
from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective
from hf_egt.integrations.diffusion.data import (
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
from hf_egt.integrations.hyper.config import HYPERNETWORK_FOLDER, config_values, option_name

logger = logging.getLogger(__name__)

# The HyperLoRAConfig fields the command exposes (`hf_egt.apps.train_diffusion` declares them from the config: type,
# default, help, choices) and the loop reads back (`config_values`).
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


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained (unwrapped) model, the group objective, the number of optimizer steps,
    the kind of model (``unet2d`` or ``stable-diffusion``), the logged values, the size of a hypernetwork's context set
    (``None`` without ``hyper``) and whether this is the main process (the one that wrote the outputs)."""

    model: Any
    group_objective: NoiseLevelGroupObjective
    global_step: int
    kind: str
    log_history: list[dict] = field(default_factory=list)
    context_size: int | None = None
    is_main_process: bool = True

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
    accelerator, components, model, group_objective, window, inputs, snr_gamma=None, hyper: bool = False
) -> dict[str, float]:
    """Forward and backward of one optimizer step's micro-batches under the group objective; returns its ``loss``
    (and, for a hypernetwork trained with PLE, the window's mean ``ple`` term, already weighted and in ``loss``).

    The objective's weights are fixed for the window (``begin_window``); each micro-batch adds its share, so the
    accumulated gradient is that of ``sum_k (n_k / n) sum_g q_kg L_kg`` over the whole window and all processes.
    The PLE term is a per-micro-batch value: it is averaged over the window. Gradients are synchronised once, on the
    last micro-batch.
    """
    group_objective.begin_window([batch["group_ids"] for batch in window], [x["buckets"] for x in inputs])
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
            loss = group_objective.window_loss(losses, batch["group_ids"], x["buckets"])
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


def check_checkpoint(checkpoint: str | os.PathLike) -> None:
    """A checkpoint folder of this loop must hold the objective state and readable files (a ``FileNotFoundError`` or
    ``ValueError`` naming ``--resume_from_checkpoint`` and the file, raised before anything is loaded)."""
    objective_path = objective_state_path(checkpoint, warn=False)
    if not os.path.isfile(objective_path):
        raise FileNotFoundError(
            f"`--resume_from_checkpoint`: {objective_path} does not exist; pass a `checkpoint-<step>` folder of "
            "`hf-egt train-diffusion`, or `latest` for the newest one in `--output_dir`."
        )
    check_checkpoint_files(checkpoint, "--resume_from_checkpoint")


def save_checkpoint(accelerator, group_objective, args, global_step: int, record: dict | None = None) -> None:
    """``accelerator.save_state`` plus the group objective's safetensors file and the run's compatibility ``record``
    (``hf_egt.core.resume``); keep at most ``save_total_limit``."""
    if args.save_total_limit is not None and accelerator.is_main_process:
        folders = checkpoints_of(args.output_dir)
        for folder in folders[: max(0, len(folders) - args.save_total_limit + 1)]:
            shutil.rmtree(folder)
    path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    accelerator.save_state(path)  # a HyperLoRAModel's state dict is its hypernetwork only
    if accelerator.is_main_process:
        group_objective.save(os.path.join(path, OBJECTIVE_STATE_NAME))
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


def run_record(args, dataset, group_labels: list) -> tuple[dict, dict]:
    """This run's compatibility record (``hf_egt.core.resume``) and its fields: the data (name and a content hash of
    the training images, groups and captions), the groups, the LoRA / hypernetwork shape and the objective settings."""
    columns = [args.image_column, args.group_column] + ([args.caption_column] if args.caption_column else [])
    record = {
        "model_name_or_path": resolved_model_path(args.model_name_or_path),
        "dataset": dataset_entry(args.dataset, dataset_sha256(dataset, columns)),
        "groups": [str(label) for label in group_labels],
    }
    record.update({key: getattr(args, key) for key in RECORD_FIELDS if key not in record})
    record["group_sampling_exponent"] = recorded_sampling_exponent(args.group_sampling, args.group_sampling_exponent)
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


def train(
    args: Any, resume_path: str | None = None, before_first_step: Callable[[], None] | None = None
) -> TrainResult:
    """Train on ``args`` (the options of ``hf-egt train-diffusion``), from ``resume_path`` (a checkpoint folder that
    :func:`check_checkpoint` accepted) or from scratch; save the adapter (and a hypernetwork), the objective state and
    the validation grids in ``args.output_dir``.

    ``before_first_step`` runs on the main process once the data, objective, resume record and model have all been
    checked and the model is ready (the command removes an earlier run's checkpoints there).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

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
    group_objective = NoiseLevelGroupObjective(
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
            group_objective.load(objective_path)
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
        exponent=args.group_sampling_exponent, batch_size=args.per_device_train_batch_size,
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
    if resume_path is not None:
        accelerator.load_state(resume_path)  # the objective's state was restored above
        global_step = int(os.path.basename(os.path.normpath(resume_path)).split("-")[1])
        logger.info("Resumed from %s at step %d.", resume_path, global_step)
    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers("egt-diffusion", config={k: v for k, v in vars(args).items() if v is not None})

    if before_first_step is not None and accelerator.is_main_process:
        before_first_step()  # every check has passed and the model is ready
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
            accelerator, components, model, group_objective, window, inputs, args.snr_gamma, hyper=args.hyper
        )
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats = group_objective.end_window()
        global_step += 1
        progress.update(1)
        worst = stats["weights"].mean(0).argmax().item()
        progress.set_postfix(**window_stats, top_weight_group=group_objective.groups[worst])
        logs = {**window_stats, "lr": lr_scheduler.get_last_lr()[0]}
        for g, label in enumerate(group_objective.groups):
            logs[f"group_loss/{label}"] = stats["group_losses"][:, g].mean().item()
            logs[f"group_weight/{label}"] = stats["weights"][:, g].mean().item()
            logs[f"group_count/{label}"] = stats["group_counts"][:, g].sum().item()
        log_history.append({"step": global_step, **logs})
        if args.report_to:
            accelerator.log(logs, step=global_step)
        if args.save_steps and global_step % args.save_steps == 0:
            save_checkpoint(accelerator, group_objective, args, global_step, record)
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
        group_objective.save(os.path.join(args.output_dir, OBJECTIVE_STATE_NAME))
        if args.validation_steps:
            validation_model = model.peft_model if args.hyper else model
            log_validation(accelerator, components, validation_model, group_labels, prompts, args, global_step)
    is_main_process = accelerator.is_main_process
    accelerator.end_training()
    return TrainResult(
        model=model,
        group_objective=group_objective,
        global_step=global_step,
        kind=components.kind,
        log_history=log_history,
        context_size=min(args.hyper_context_size, len(dataset)) if args.hyper else None,
        is_main_process=is_main_process,
    )
