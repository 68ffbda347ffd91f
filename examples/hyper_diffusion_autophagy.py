#!/usr/bin/env python
"""Self-consuming loop (model autophagy) of a class-conditional digits diffusion model: per-class EGT per generation.

A small class-conditional ``UNet2DModel`` is pretrained briefly (ERM) on ``digits-imbalanced`` and then frozen: it is
the common starting point of every fit. Each generation fits an adapter on the current data set with
``hf_egt.apps.train_diffusion`` (the command ``hf-egt train-diffusion``), from the same frozen base and the same
seed:

* ``lora`` — a plain LoRA (``--lora_r 8 --lora_conv``);
* ``hyper`` — ``--hyper``: a hypernetwork generating that LoRA from a set of images (the exported LoRA is the one
  generated for the current data set);
* ``hyper-ple`` — ``--hyper --ple_weight`` (PLE with images sampled from the model; λ = 0.1, the paper's);
* ``hyper-ple-strong`` — the same with ``--ple_weight_strong`` (λ = 1e6: with i.i.d. batches as sets the weighted
  penalty at λ = 0.1 is ~1e-9, negligible next to a denoising loss of ~0.1);
* ``hyper-amortised`` (opt-in: ``--methods hyper-amortised --append``) — the hypernetwork fitted once, at
  generation 0; each later "refit" only encodes the new data set as the context (the amortised loop of
  ``examples/hyper_autophagy.py``).

Generation 0 is fitted on the real data. Generation g + 1 is fitted on images sampled from fit g, class-conditioned
with the real data's class counts (1344 images, classes 2, 5 and 8 at 15 %), labelled with their condition; with
fresh data, ``--fresh_fraction`` of each class is replaced by real images of that class (drawn anew each generation
from the real set). All fits use ``--objective erm`` so that only the estimator differs.

Per generation: ``hf_egt.core.metrics.egt_report`` per digit class (k-NN KL and Fréchet distance in the feature space
of a classifier trained on the full, balanced digits; real reference: all real digits of the class, generated:
``--eval_per_class`` images conditioned on the class), the classifier's agreement with the condition, and the
per-class generated share (the classifier's labels of the sampled training set of the next generation).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD python examples/hyper_diffusion_autophagy.py
    PYTHONPATH=$PWD python examples/hyper_diffusion_autophagy.py --phase report   # table and plot only

Writes ``--output_dir`` (default ``outputs/hyper-diffusion-autophagy``): ``results.json`` (every number),
``report.md`` and the plot (also copied to ``--plot``, default ``docs/images/hyper_autophagy_digits_diffusion.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from diffusion_digits_experiment import digits_tensor, pretrain  # noqa: E402

from hf_egt.integrations.diffusion.data import DIGITS_MINORITY_CLASSES, digits_imbalanced_arrays  # noqa: E402

METHODS = ("lora", "hyper", "hyper-ple", "hyper-ple-strong", "hyper-amortised")


def label(method: str, settings: dict) -> str:
    if method == "lora":
        return "plain LoRA"
    if method == "hyper":
        return "hypernetwork"
    if method == "hyper-amortised":
        return "hypernetwork, amortised refit"
    weight = settings["ple_weight_strong"] if method == "hyper-ple-strong" else settings["ple_weight"]
    return f"hypernetwork + PLE λ={weight:g}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--output_dir", default="outputs/hyper-diffusion-autophagy")
    add("--plot", default="docs/images/hyper_autophagy_digits_diffusion.png")
    add("--phase", choices=["all", "report"], default="all")
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS[:4]))
    add("--append", action="store_true", help="Add these methods' chains to an existing results.json.")
    add("--generations", type=int, default=5, help="Fits per chain (generation 0 is fitted on real data).")
    add("--fresh_fraction", type=float, default=0.2, help="Share of each class replaced by real data (fresh chain).")
    add("--pretrain_steps", type=int, default=300)
    add("--fit_steps", type=int, default=100)
    add("--batch_size", type=int, default=64)
    add("--lora_lr", type=float, default=1e-3)
    add("--hyper_lr", type=float, default=3e-4, help="Lower than LoRA's: see docs/hypernetwork.md, learning rate.")
    add("--ple_weight", type=float, default=0.1)
    add("--ple_weight_strong", type=float, default=1e6)
    add("--ple_every", type=int, default=8)
    add("--ple_inference_steps", type=int, default=10)
    add("--eval_per_class", type=int, default=60)
    add("--inference_steps", type=int, default=15)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    return parser.parse_args(argv)


def method_arguments(method: str, args) -> list[str]:
    if method == "lora":
        return ["--learning_rate", str(args.lora_lr)]
    hyper = ["--hyper", "--learning_rate", str(args.hyper_lr), "--hyper_context_size", "4096"]
    if method.startswith("hyper-ple"):
        weight = args.ple_weight_strong if method == "hyper-ple-strong" else args.ple_weight
        hyper += ["--ple_weight", str(weight), "--ple_every", str(args.ple_every)]
        hyper += ["--ple_inference_steps", str(args.ple_inference_steps)]
    return hyper


def save_dataset(images: torch.Tensor, labels: torch.Tensor, folder: str) -> str:
    """Images in [-1, 1] as 8-bit greyscale PIL images with their labels, a ``save_to_disk`` folder."""
    import datasets
    from PIL import Image

    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "group": labels.tolist()},
        features=datasets.Features({"image": datasets.Image(), "group": datasets.Value("int64")}),
    ).save_to_disk(folder)
    return folder


def fit(base: str, data: str, output_dir: str, method: str, args, probe_sets: list[torch.Tensor]):
    """One fit with the training script; returns the model to sample from (a peft model with the LoRA loaded) and
    statistics: final loss, mean PLE term, and for a hypernetwork its `context_sensitivity` over `probe_sets`."""
    from hf_egt.apps.train_diffusion import main, parse_args

    argv = [
        "--model_name_or_path", base, "--dataset", data, "--resolution", "8",
        "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.fit_steps), "--lora_r", "8",
        "--lora_alpha", "8", "--lora_conv", "--objective", "erm", "--save_steps", "0",
        "--seed", str(args.seed), "--output_dir", output_dir, *method_arguments(method, args),
    ]  # fmt: skip
    result = main(parse_args(argv))
    ple = [logs["ple"] for logs in result.log_history if "ple" in logs]
    stats = {"final_loss": result.log_history[-1]["loss"], "mean_ple": float(np.mean(ple)) if ple else None}
    if method == "lora":
        return result.model.eval(), stats, None
    stats["context_sensitivity"] = float(result.model.context_sensitivity([{"sample": s} for s in probe_sets]))
    return result.model.peft_model.eval(), stats, result.model


@torch.no_grad()
def refit_context(hyper_model, images: torch.Tensor):
    """Amortised refit: the context of a fitted hypernetwork becomes the encoding of the new data set (one set)."""
    hyper_model.set_context(context=hyper_model.hypernetwork.set_encoder(hyper_model.embed(sample=images)))
    return hyper_model.peft_model.eval()


def sample(model, scheduler_config, labels: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    from hf_egt.integrations.diffusion.sampling import sample_unet2d

    generator = torch.Generator().manual_seed(seed)
    return sample_unet2d(model, scheduler_config, len(labels), labels, steps, generator)


def evaluate(classifier, real, images, labels, train_images) -> dict:
    """Per-class EGT (KL, Fréchet), classifier agreement per class, and the classifier's per-class share of the
    sampled training set."""
    from hf_egt.core.metrics import egt_report
    from hf_egt.core.metrics.report import proportion_criteria

    with torch.no_grad():
        features = classifier.features(images).numpy()
        predicted = classifier(images).argmax(-1)
        train_predicted = classifier(train_images).argmax(-1).tolist()
    out = {}
    for divergence in ("kl", "frechet"):
        report = egt_report(
            real["features"],
            real["labels"],
            generated_features=features,
            generated_groups=labels.tolist(),
            divergence=divergence,
            n_bootstrap=0,
        )
        out[divergence] = {key: report[key] for key in ("per_group", "gap", "worst_group", "overall")}
    out["agreement"] = {c: float((predicted[labels == c] == c).float().mean()) for c in range(10)}
    counts = {c: train_predicted.count(c) for c in range(10)}
    out["share"] = proportion_criteria(real["imbalanced_counts"], counts)
    return out


def run_chain(fresh: float, method: str, base, scheduler_config, classifier, real, results, gen0, args) -> None:
    """Fit -> sample -> refit for ``args.generations`` generations; records each generation in ``results``.

    Generation 0 (real data, same seed) is the same fit for every fresh fraction: ``gen0[method]`` caches it.
    """
    amortised = method == "hyper-amortised"
    hyper_model = None
    chain = f"{method}/fresh={fresh:g}"
    rng = np.random.default_rng(args.seed + 1)
    images, labels = real["imbalanced_images"], real["imbalanced_labels"]
    eval_labels = torch.arange(10).repeat_interleave(args.eval_per_class)
    for generation in range(args.generations):
        key = f"{chain}/gen{generation}"
        start = time.time()
        if generation == 0 and method in gen0:
            record, next_images, hyper_model = gen0[method]
            next_images = next_images.clone()
        else:
            if amortised and generation > 0:
                model = refit_context(hyper_model, images)
                fit_stats = {"final_loss": None, "mean_ple": None}
                fit_stats["context_sensitivity"] = gen0[method][0]["context_sensitivity"]
            else:
                folder = os.path.join(args.output_dir, "work", chain.replace("/", "_").replace("=", ""))
                folder = os.path.join(folder, f"gen{generation}")
                data = save_dataset(images, labels, os.path.join(folder, "data"))
                probe_sets = [real["imbalanced_images"][real["imbalanced_labels"] == c] for c in range(10)]
                model, fit_stats, hyper_model = fit(base, data, os.path.join(folder, "fit"), method, args, probe_sets)
                shutil.rmtree(folder)
            fit_seconds = time.time() - start
            eval_images = sample(model, scheduler_config, eval_labels, args.inference_steps, seed=1000 + generation)
            next_images = sample(model, scheduler_config, labels, args.inference_steps, seed=2000 + generation)
            metrics = evaluate(classifier, real, eval_images, eval_labels, next_images)
            record = {**metrics, **fit_stats, "fit_s": fit_seconds, "total_s": time.time() - start}
            if generation == 0:
                gen0[method] = (record, next_images.clone(), hyper_model)
        if fresh > 0:  # replace a share of each class by real images of that class, drawn anew
            for c in range(10):
                members = np.flatnonzero(labels.numpy() == c)
                chosen = rng.choice(members, size=round(fresh * len(members)), replace=False)
                pool = np.flatnonzero(real["imbalanced_labels"].numpy() == c)
                next_images[chosen] = real["imbalanced_images"][rng.choice(pool, size=len(chosen), replace=False)]
        images = next_images
        results[key] = record
        save_results(results, args)
        kl = record["kl"]
        print(
            f"{key}: worst-class KL {max(kl['per_group'].values()):.3f} (class {kl['worst_group']}), "
            f"gap {kl['gap']:.3f}, minority share {minority_share(record):.3f}, {record['total_s']:.0f} s",
            flush=True,
        )


def minority_share(metrics: dict) -> float:
    shares = metrics["share"]["generated_share"]
    return float(np.mean([shares[c] if c in shares else shares[str(c)] for c in DIGITS_MINORITY_CLASSES]))


def save_results(results: dict, args) -> None:
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1, default=float)


def run(args) -> None:
    from diffusers import DDPMScheduler
    from sklearn.datasets import load_digits

    from hf_egt.integrations.diffusion.classifier import train_digit_classifier

    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "results.json")
    if args.append and os.path.exists(path):
        with open(path) as handle:
            results = json.load(handle)
        results.setdefault("appended_runs", []).append({"settings": vars(args)})
    else:
        results = {"settings": vars(args)}
    gen0 = {}
    base = os.path.join(args.output_dir, "pretrained")
    start = time.time()
    if os.path.exists(os.path.join(base, "model_index.json")):
        scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    else:
        _, scheduler = pretrain(base, args.pretrain_steps, args.batch_size, seed=args.seed)
        results["pretrain_s"] = time.time() - start
    digits = load_digits()
    real_images = digits_tensor(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8))
    real_labels = torch.from_numpy(digits.target)
    classifier = train_digit_classifier(real_images, real_labels, seed=0)
    pixels, labels = digits_imbalanced_arrays()
    real = {
        "features": classifier.features(real_images).detach().numpy(),
        "labels": real_labels.tolist(),
        "imbalanced_images": digits_tensor(pixels),
        "imbalanced_labels": torch.from_numpy(labels),
        "imbalanced_counts": {c: int((labels == c).sum()) for c in range(10)},
    }
    for fresh in (0.0, args.fresh_fraction):
        for method in args.methods:
            run_chain(fresh, method, base, scheduler.config, classifier, real, results, gen0, args)
    (results["appended_runs"][-1] if args.append and "appended_runs" in results else results)["total_s"] = (
        time.time() - start
    )
    save_results(results, args)


def chains(results: dict):
    """``{(method, fresh): [generation results]}`` in generation order."""
    out = {}
    for key, value in results.items():
        if key.count("/") != 2:
            continue
        method, fresh, generation = key.split("/")
        out.setdefault((method, float(fresh.split("=")[1])), {})[int(generation[3:])] = value
    return {chain: [gens[g] for g in sorted(gens)] for chain, gens in out.items()}


def per_class(metrics: dict, divergence: str, classes) -> float:
    values = metrics[divergence]["per_group"]
    return float(np.mean([values[c] if c in values else values[str(c)] for c in classes]))


def report(args) -> str:
    with open(os.path.join(args.output_dir, "results.json")) as handle:
        results = json.load(handle)
    majority = [c for c in range(10) if c not in DIGITS_MINORITY_CLASSES]
    lines = [
        "| method | fresh data | gen | worst-class KL (class) | KL gap | KL minority 2,5,8 | KL others | "
        "worst-class Fréchet | Fréchet gap | agreement minority | minority share (real 2.0 %) | PLE term | "
        "context sensitivity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(chains(results).items(), key=lambda item: (item[0][1], METHODS.index(item[0][0])))
    for (method, fresh), generations in ordered:
        for g, m in enumerate(generations):
            kl, fd = m["kl"], m["frechet"]
            name = label(method, results["settings"])
            agreement = np.mean([m["agreement"][str(c)] for c in DIGITS_MINORITY_CLASSES])
            ple = f"{m['mean_ple']:.2e}" if m.get("mean_ple") is not None else "–"
            sensitivity = f"{m['context_sensitivity']:.1e}" if "context_sensitivity" in m else "–"
            lines.append(
                f"| {name} | {fresh:.0%} | {g} | {max(kl['per_group'].values()):.3f} ({kl['worst_group']}) "
                f"| {kl['gap']:.3f} | {per_class(m, 'kl', DIGITS_MINORITY_CLASSES):.3f} | "
                f"{per_class(m, 'kl', majority):.3f} | {max(fd['per_group'].values()):.2f} | {fd['gap']:.2f} | "
                f"{agreement:.2f} | {minority_share(m):.1%} | {ple} | {sensitivity} |"
            )
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.output_dir, "report.md"), "w") as handle:
        handle.write(table)
    print(table)
    plot(results, args)
    return table


def plot(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = chains(results)
    fresh_values = sorted({fresh for _, fresh in data})
    fig, axes = plt.subplots(2, len(fresh_values), figsize=(5.5 * len(fresh_values), 7), squeeze=False)
    for column, fresh in enumerate(fresh_values):
        for method in METHODS:
            if (method, fresh) not in data:
                continue
            generations = data[(method, fresh)]
            name = label(method, results["settings"])
            x = range(len(generations))
            worst = [max(m["kl"]["per_group"].values()) for m in generations]
            gap = [m["kl"]["gap"] for m in generations]
            (line,) = axes[0, column].plot(x, worst, marker="o", label=name)
            axes[0, column].plot(x, gap, marker="x", ls="--", color=line.get_color())
            axes[1, column].plot(x, [100 * minority_share(m) for m in generations], marker="o", label=name)
        axes[0, column].set_title(f"{'no fresh data' if fresh == 0 else f'{fresh:.0%} fresh real data'}")
        axes[0, column].set_ylabel("KL: worst class (o), gap (x, dashed)")
        axes[1, column].axhline(2.0, color="grey", ls=":", label="real data")
        axes[1, column].set_ylabel("share of 2, 5, 8 in samples (%)")
        axes[1, column].set_xlabel("generation")
        for ax in axes[:, column]:
            ax.set_xticks(range(max(len(g) for g in data.values())))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Self-consuming loop, class-conditional digits diffusion (fit -> sample -> refit)")
    fig.tight_layout()
    for path in (os.path.join(args.output_dir, "autophagy_digits_diffusion.png"), args.plot):
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fig.savefig(path, dpi=100)


if __name__ == "__main__":
    import logging

    arguments = parse_args()
    logging.getLogger("hf_egt.core.metrics").setLevel(logging.WARNING)
    torch.set_num_threads(arguments.threads)
    if arguments.phase == "all":
        run(arguments)
    report(arguments)
