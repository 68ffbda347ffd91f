#!/usr/bin/env python
"""EGT on digits-imbalanced: pretrain a small class-conditional UNet2DModel with ERM, then LoRA fine-tune it with
ERM, inverse-frequency reweighting and min-max (3 seeds each), and compare per-class generation quality.

Data: ``digits-imbalanced`` (scikit-learn digits, classes 2, 5 and 8 kept at 15 %, see
``hf_egt.integrations.diffusion.data``). Features: the hidden layer of a small MLP classifier trained on the full,
balanced digits (``hf_egt.integrations.diffusion.classifier.train_digit_classifier``). Real images of class a: all
digits of class a (the data distribution P_a, ~180 each); generated: ``--samples_per_class`` images conditioned on
class a. Per-class EGT: ``hf_egt.core.metrics.egt_report`` (``--divergences``, default KL and Frechet distance).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python examples/diffusion_digits_experiment.py  # ~17 min, 1 thread
    PYTHONPATH=$PWD python examples/diffusion_digits_experiment.py --phase report  # metrics only

Everything goes to ``--output_dir`` (default ``outputs/diffusion-digits``): the pretrained pipeline, each run's
adapter, ``samples.npz`` (features and labels of real and generated images) and ``report.json`` / ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from hf_egt.integrations.diffusion.classifier import train_digit_classifier
from hf_egt.integrations.diffusion.data import digits_imbalanced_arrays
from hf_egt.integrations.diffusion.losses import per_example_mse
from hf_egt.integrations.diffusion.sampling import image_grid, sample_unet2d

# Fine-tuning variants: name -> arguments of the training script on top of the common ones.
VARIANTS = {
    "erm": ["--objective", "erm"],
    "reweight": ["--objective", "reweight"],
    "minmax": ["--objective", "minmax", "--noise_buckets", "4"],  # worst class at each of 4 noise levels
    "minmax-k1": ["--objective", "minmax", "--noise_buckets", "1"],  # one set of class weights for all noise levels
    # with Sagawa et al.'s generalisation adjustment C / sqrt(n_g) (n_g: the class's examples in the batch)
    "minmax-k1-adj": ["--objective", "minmax", "--noise_buckets", "1", "--group_adjustment", "0.05"],
    "ema": ["--objective", "ema", "--noise_buckets", "4", "--group_temperature", "0.01"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/diffusion-digits")
    parser.add_argument("--phase", choices=["all", "report"], default="all")
    parser.add_argument("--pretrain_steps", type=int, default=800)
    parser.add_argument("--finetune_steps", type=int, default=120)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--reuse", action="store_true", help="Keep what samples.npz holds; run only what is missing.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--group_step_size", type=float, default=0.5)
    parser.add_argument("--samples_per_class", type=int, default=60)
    parser.add_argument("--inference_steps", type=int, default=15)
    parser.add_argument("--divergences", nargs="+", default=["kl", "frechet"], help="of hf_egt.core.metrics.egt_report")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU).")
    return parser.parse_args(argv)


def digits_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).float().div(127.5).sub(1).unsqueeze(1)


def pretrain(folder: str, steps: int, batch_size: int, seed: int = 0):
    """Full-parameter ERM pretraining of a small class-conditional UNet2DModel on digits-imbalanced."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    pixels, labels = digits_imbalanced_arrays()
    images, labels = digits_tensor(pixels), torch.from_numpy(labels)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=16, num_class_embeds=10,
    )  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        noise = torch.randn(images[index].shape, generator=generator)
        timesteps = torch.randint(0, 1000, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(images[index], noise, timesteps)
        loss = per_example_mse(unet(noisy, timesteps, class_labels=labels[index]).sample, noise).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(folder)
    return unet, scheduler


def generate(unet, scheduler_config, per_class: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(10).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(1000 + seed)
    return sample_unet2d(unet.eval(), scheduler_config, len(labels), labels, steps, generator), labels


def finetune(base: str, output_dir: str, variant: str, seed: int, args):
    from hf_egt.apps.train_diffusion import main, parse_args

    argv = [
        "--model_name_or_path", base, "--dataset", "digits-imbalanced", "--resolution", "8",
        "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.finetune_steps),
        "--learning_rate", "1e-3", "--lora_r", "8", "--lora_alpha", "8", "--lora_conv",
        "--group_step_size", str(args.group_step_size),
        "--save_steps", "0", "--seed", str(seed), "--output_dir", output_dir, *VARIANTS[variant],
    ]  # fmt: skip
    return main(parse_args(argv)).model


def run(args) -> None:
    """Pretrain, train the feature classifier, fine-tune every variant and seed, sample; save ``samples.npz``.

    With ``--reuse``, what ``samples.npz`` already holds (and the pretrained model) is kept and only the missing
    variants are run; the classifier is retrained with the same seed and checked to give the same real features.
    """
    from diffusers import DDPMScheduler, UNet2DModel
    from sklearn.datasets import load_digits

    os.makedirs(args.output_dir, exist_ok=True)
    base = os.path.join(args.output_dir, "pretrained")
    samples_path, timings_path = (os.path.join(args.output_dir, name) for name in ("samples.npz", "timings.json"))
    reuse = args.reuse and os.path.exists(samples_path)
    arrays = dict(np.load(samples_path)) if reuse else {}
    timings = json.load(open(timings_path)) if reuse else {}
    if reuse:
        scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    else:
        start = time.time()
        _, scheduler = pretrain(base, args.pretrain_steps, args.batch_size)
        timings["pretrain_s"] = time.time() - start

    digits = load_digits()
    real_images = digits_tensor(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8))
    real_labels = torch.from_numpy(digits.target)
    classifier = train_digit_classifier(real_images, real_labels, seed=0)
    real_features = classifier.features(real_images).numpy()
    if reuse and not np.allclose(arrays["real_features"], real_features, atol=1e-5):
        raise RuntimeError("The retrained classifier differs from the one of samples.npz; rerun without --reuse.")
    arrays.update(real_features=real_features, real_labels=real_labels.numpy())

    def record(name: str, model) -> None:
        images, labels = generate(model, scheduler.config, args.samples_per_class, args.inference_steps, seed=0)
        with torch.no_grad():
            arrays[f"{name}/features"] = classifier.features(images).numpy()
            arrays[f"{name}/accuracy"] = np.array((classifier(images).argmax(-1) == labels).float().mean().item())
        arrays[f"{name}/labels"] = labels.numpy()
        image_grid([images[labels == c][:10] for c in range(10)]).save(os.path.join(args.output_dir, f"{name}.png"))

    if "pretrained/features" not in arrays:
        record("pretrained", UNet2DModel.from_pretrained(base, subfolder="unet"))
    for variant in args.variants:
        for seed in args.seeds:
            name = f"{variant}-seed{seed}"
            if f"{name}/features" in arrays:
                continue
            start = time.time()
            model = finetune(base, os.path.join(args.output_dir, name), variant, seed, args)
            timings[f"{name}_s"] = time.time() - start
            record(name, model)
            np.savez(samples_path, **arrays)
            with open(timings_path, "w") as handle:
                json.dump(timings, handle, indent=1)


def report(args) -> dict:
    from hf_egt.core.metrics import egt_report

    data = np.load(os.path.join(args.output_dir, "samples.npz"))

    def measure(features, labels, divergence):
        return egt_report(
            data["real_features"], data["real_labels"].tolist(),
            generated_features=features, generated_groups=labels.tolist(),
            divergence=divergence, n_bootstrap=10, seed=0,
        )  # fmt: skip

    order = ["pretrained", *VARIANTS]
    names = sorted(
        {key.split("/")[0] for key in data.files if "/" in key},
        key=lambda name: (order.index(name.split("-seed")[0]) if name.split("-seed")[0] in order else len(order), name),
    )
    reports, tables = {}, []
    for divergence in args.divergences:
        results = {}
        for name in names:
            result = measure(data[f"{name}/features"], data[f"{name}/labels"], divergence)
            result["classifier_accuracy"] = float(data[f"{name}/accuracy"])
            results[name] = result
        reports[divergence] = results
        tables.append(markdown_table(results))
    with open(os.path.join(args.output_dir, "report.json"), "w") as handle:
        json.dump(reports, handle, indent=1, default=float)
    with open(os.path.join(args.output_dir, "report.md"), "w") as handle:
        handle.write("\n".join(tables))
    print("\n".join(tables))
    return reports


def markdown_table(results: dict) -> str:
    """Mean ± std over seeds of gap, worst class, minority-class mean, overall and accuracy; per-class means."""
    groups = {}
    for name in results:
        groups.setdefault(name.split("-seed")[0], []).append(results[name])
    divergence = next(iter(results.values()))["divergence"]
    lines = [
        f"Divergence: {divergence} (lower is better), classifier features.\n",
        "| model | gap (max-min) | worst class | mean over minority classes 2,5,8 | mean over others | overall | "
        "classifier accuracy on samples |",
        "|---|---|---|---|---|---|---|",
    ]

    def stat(values):
        values = np.asarray(values, dtype=float)
        return f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values.mean():.3f}"

    def per_class(r, classes):
        return np.mean([r["per_group"][c] if c in r["per_group"] else r["per_group"][str(c)] for c in classes])

    for model, runs in groups.items():
        worst = ", ".join(str(r["worst_group"]) for r in runs)
        lines.append(
            f"| {model} ({len(runs)} run{'s' if len(runs) > 1 else ''}) | {stat([r['gap'] for r in runs])} | {worst} | "
            f"{stat([per_class(r, (2, 5, 8)) for r in runs])} | "
            f"{stat([per_class(r, (0, 1, 3, 4, 6, 7, 9)) for r in runs])} | {stat([r['overall'] for r in runs])} | "
            f"{stat([r['classifier_accuracy'] for r in runs])} |"
        )
    lines += ["", "Per-class divergence (mean over runs):", ""]
    lines.append("| model | " + " | ".join(str(c) for c in range(10)) + " |")
    lines.append("|---|" + "---|" * 10)
    for model, runs in groups.items():
        cells = [f"{np.mean([per_class(r, (c,)) for r in runs]):.3f}" for c in range(10)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    arguments = parse_args()
    torch.set_num_threads(arguments.threads)
    if arguments.phase == "all":
        run(arguments)
    report(arguments)
