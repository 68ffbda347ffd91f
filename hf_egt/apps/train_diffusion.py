"""``hf-egt train-diffusion`` (and ``examples/train_egt_diffusion.py``): min-max (group DRO) LoRA fine-tuning of a
diffusers model, the program around the library loop :func:`hf_egt.integrations.diffusion.train.train`.

Here: the options (argparse, the names of ``hf-egt train`` for every shared concept, docs/trainer.md "One
vocabulary", the old spellings of ``RENAMED_OPTIONS`` warning), their checks, the output-folder and resume policy (the
rules of ``hf_egt.apps.checks``, shared with ``hf-egt train``), the model card and the push. The loop, its checkpoints
and their compatibility record are library code in ``hf_egt.integrations.diffusion.train``.

With ``--hyper`` the trained module is a :class:`~hf_egt.integrations.hyper.HyperLoRAModel` over the frozen UNet: a
hypernetwork that generates the LoRA factors from a set of images (each micro-batch's clean images while training),
with the optional PLE self-consumption penalty (``--ple_weight``, images sampled from the model). The output folder
then holds the plain LoRA of one fixed context (``--hyper_context_size`` training images), loadable without hf_egt, and
the hypernetwork itself under ``hypernetwork/``.
"""

from __future__ import annotations

import argparse
import os

from hf_egt.apps import checks
from hf_egt.apps.arguments import add_config_arguments, add_renamed_options, check_required_options
from hf_egt.core.objective import LOSS_ESTIMATES, OBJECTIVE_MODES
from hf_egt.core.resume import resolved_model_path
from hf_egt.core.samplers import GROUP_SAMPLINGS, check_sampling_exponent
from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective
from hf_egt.integrations.diffusion.data import DIGITS_DATASET_NAME
from hf_egt.integrations.diffusion.train import HYPER_CONFIG_FIELDS, TrainResult, check_checkpoint, train
from hf_egt.integrations.hyper.config import HYPERNETWORK_FOLDER, POSITIVE_INTEGERS, option_name

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
        "--reweight_groups), temperature (p_g ∝ n_g ** --group_sampling_exponent), stratified (every optimizer "
        "step holds each group's share exactly; equal by default) or homogeneous (every micro-batch of "
        "--per_device_train_batch_size holds one group, the groups taking turns); seeded with --seed and the epoch.",
    )
    group(
        "--group_sampling_exponent",
        type=float,
        default=None,
        help="alpha of temperature and stratified sampling (shares ∝ n_g ** alpha), in [-1, 1]: 1 natural, 0 equal, "
        "below 0 favours small groups; default 0.5 for temperature, 0 for stratified.",
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
    try:
        check_sampling_exponent(args.group_sampling_exponent)
    except ValueError as error:  # name the option, not the field
        raise ValueError(str(error).replace("`group_sampling_exponent`", "`--group_sampling_exponent`")) from None
    checks.check_optimizer_options(args)  # what AdamW and the scheduler would reject only after the model is loaded
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


def model_card(args, kind: str, group_objective: NoiseLevelGroupObjective, context_size: int | None = None) -> str:
    """The card (``hf_egt.integrations.hub.build_model_card``): base model, data, objective and the final group weights
    of ``group_objective`` (``context_size``: the number of training images a hypernetwork's exported LoRA was
    generated from)."""
    from hf_egt.integrations.hub import build_model_card

    weights = group_objective.weights.mean(0).tolist()
    rows = "\n".join(f"| {g} | {w:.4f} |" for g, w in zip(group_objective.groups, weights))
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
        f"{group_objective.step} steps with the `{args.objective}` group objective over `{args.group_column}` "
        f"({group_objective.num_buckets} noise-level bucket(s)). Load it as shown under Use."
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
        settings={"steps": group_objective.step, "noise-level buckets": group_objective.num_buckets},
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
    """Run the command on parsed options (``parse_args``): the checks that need no model (output folder, resume, Hub),
    the library loop, then, on the main process, the model card and the push. Returns the loop's ``TrainResult``."""
    resume = checks.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    checks.check_resume_allow_changes(args.resume_allow_changes, resume)
    if resume is not None:  # what this command's checkpoints hold, before anything is loaded
        check_checkpoint(resume)
    replaced = checks.check_output_dir(args.output_dir, resume, args.overwrite_output_dir)
    if args.push_to_hub:  # a missing token or an unreachable Hub fails now, not after training
        from hf_egt.integrations.hub import check_hub_reachable, resolve_hub_token

        check_hub_reachable(resolve_hub_token())
    # every check has passed and the model is ready: only then are the earlier run's checkpoints removed
    remove = (lambda: checks.remove_checkpoints(args.output_dir)) if replaced else None
    result = train(args, resume, before_first_step=remove)
    if result.is_main_process:
        card = model_card(args, result.kind, result.group_objective, result.context_size)
        with open(os.path.join(args.output_dir, "README.md"), "w") as handle:
            handle.write(card)
        if args.push_to_hub:
            push_to_hub(args.output_dir, args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)), card)
    return result
