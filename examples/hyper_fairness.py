"""Minority fairness on a tiny imbalanced LM task: HyperLoRA (± PLE, λ ablation) vs plain LoRA vs up-weighting.

Two groups of token sequences share one vocabulary but follow different rules (majority: next = t + 1, minority:
next = t + 3, both mod V, with 20% random tokens), 90% / 10% of the training set. A tiny random Llama is adapted
with the same LoRA targets and rank by:

* LoRA (ERM) — plain peft LoRA, mean loss;
* LoRA + up-weighting — the same with `GroupObjective(objective="reweight")` (each group present in a batch weighs
  the same: inverse group frequency);
* HyperLoRA, mixed sets — `HyperLoRAModel`, the i.i.d. training batch is the set;
* HyperLoRA, group-pure sets — each training batch is drawn from one group (chosen with its training share, so the
  data exposure matches ERM in expectation): the set now carries information about the group; with the
  `input_embeddings` set embedder (a bag of tokens, which cannot tell the two rules apart: they use the same tokens)
  and with `last_hidden` (the frozen base's contextual states, which see token order);
* HyperLoRA, group-pure sets, `last_hidden` + PLE — `ple_weight` λ ∈ {0.1, 10, 1000} (`ple_reduction="mean"`: the
  penalty is a mean squared difference of LoRA factors, about 1e-6 here, so useful λ are large).

Evaluated on held-out sequences per group (mean token NLL; lower is better): HyperLoRA with one context taken from
a mixed training sample ("pooled", one adapter for everyone, what `export_peft` ships), and with a context taken
from held-out examples of the evaluated group ("group"). `context_sensitivity` over group-pure and mixed sets says
whether H depends on its input. Writes a JSON and a PNG. `--diagnose-embedders` only measures whether the set
embedders' outputs separate the two groups at all.

    python examples/hyper_fairness.py --out outputs/hyper
    python examples/hyper_fairness.py --diagnose-embedders
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_egt import GroupObjective
from hf_egt.integrations.hyper import HyperLoRAConfig, HyperLoRAModel

VOCAB = 48
LENGTH = 16
RULES = {"majority": 1, "minority": 3}
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def make_sequences(rule: int, count: int, generator: torch.Generator, noise: float = 0.2) -> torch.Tensor:
    start = torch.randint(0, VOCAB, (count, 1), generator=generator)
    sequences = (start + rule * torch.arange(LENGTH)) % VOCAB
    random = torch.randint(0, VOCAB, sequences.shape, generator=generator)
    keep = torch.rand(sequences.shape, generator=generator) >= noise
    return torch.where(keep, sequences, random)


def make_data(seed: int, train_size: int = 1000, minority_share: float = 0.1, test_size: int = 200) -> dict:
    generator = torch.Generator().manual_seed(seed)
    minority_count = round(train_size * minority_share)
    train = torch.cat(
        [
            make_sequences(RULES["majority"], train_size - minority_count, generator),
            make_sequences(RULES["minority"], minority_count, generator),
        ]
    )
    groups = torch.cat(
        [torch.zeros(train_size - minority_count, dtype=torch.long), torch.ones(minority_count, dtype=torch.long)]
    )
    test = {name: make_sequences(rule, test_size, generator) for name, rule in RULES.items()}
    context = {name: make_sequences(rule, 32, generator) for name, rule in RULES.items()}
    return {"train": train, "groups": groups, "test": test, "context": context}


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def per_example_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    )
    return losses.view(input_ids.shape[0], -1).mean(dim=1)


def batch_indices(data: dict, generator: torch.Generator, group_sets: bool) -> torch.Tensor:
    """32 training rows: i.i.d. (mixed sets), or all from one group drawn with its training share (group-pure sets;
    every example is seen as often as with i.i.d. batches in expectation)."""
    if not group_sets:
        return torch.randint(0, data["train"].shape[0], (32,), generator=generator)
    groups = data["groups"]
    group = groups[torch.randint(0, groups.shape[0], (1,), generator=generator)]
    members = (groups == group).nonzero().squeeze(1)
    return members[torch.randint(0, members.shape[0], (32,), generator=generator)]


def train(
    model, data: dict, steps: int, seed: int, objective: GroupObjective | None = None, group_sets: bool = False
) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        index = batch_indices(data, generator, group_sets)
        input_ids = data["train"][index]
        output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        losses = per_example_loss(output.logits, input_ids)
        loss = objective(losses, data["groups"][index]).loss if objective is not None else losses.mean()
        if "ple" in output:
            loss = loss + output["ple"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def group_losses(model, data: dict) -> dict[str, float]:
    model.eval()
    out = {}
    for name, input_ids in data["test"].items():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        out[name] = per_example_loss(logits, input_ids).mean().item()
    out["worst"] = max(out[name] for name in RULES)
    out["gap"] = out["minority"] - out["majority"]
    return out


def run_seed(seed: int, steps: int, ple_weights: list[float]) -> dict:
    from peft import LoraConfig, get_peft_model

    data = make_data(seed)
    results, sensitivity = {}, {}
    base_loss = group_losses(tiny_llama(seed), data)
    results["base (no adapter)"] = base_loss
    for name, objective in [
        ("LoRA (ERM)", None),
        ("LoRA + up-weighting", GroupObjective(num_groups=2, objective="reweight")),
    ]:
        model = get_peft_model(tiny_llama(seed), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
        train(model, data, steps, seed, objective)
        results[name] = group_losses(model, data)
    mixed = torch.Generator().manual_seed(seed + 7)
    variants = [(0.0, False, "input_embeddings"), (0.0, True, "input_embeddings")]
    variants += [(weight, True, "last_hidden") for weight in [0.0, *ple_weights]]
    for weight, group_sets, embedder in variants:
        config = HyperLoRAConfig(
            set_encoder_input=embedder,
            r=4,
            lora_alpha=8,
            target_modules=TARGETS,
            ple_weight=weight,
            ple_every=4,
            ple_prompt_length=4,
            hidden_size=64,
            set_encoder_hidden=64,
            context_dim=32,
        )
        model = HyperLoRAModel(tiny_llama(seed), config)
        train(model, data, steps, seed, group_sets=group_sets)
        name = "HyperLoRA" + (", group-pure sets" if group_sets else ", mixed sets") + f", {embedder}"
        name += f" + PLE λ={weight:g}" if weight else ""
        sample = data["train"][torch.randperm(data["train"].shape[0], generator=mixed)[:256]]
        model.set_context(input_ids=sample, attention_mask=torch.ones_like(sample))
        results[f"{name}, pooled context"] = group_losses(model, data)
        per_group = {}
        for group, context in data["context"].items():
            model.set_context(input_ids=context, attention_mask=torch.ones_like(context))
            per_group[group] = group_losses(model, data)[group]
        per_group["worst"] = max(per_group.values())
        per_group["gap"] = per_group["minority"] - per_group["majority"]
        results[f"{name}, group context"] = per_group
        sets = [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in data["context"].values()]
        sets += [{"input_ids": s, "attention_mask": torch.ones_like(s)} for s in sample.split(32)[:4]]
        sensitivity[name] = model.context_sensitivity(sets).item()
    return {"results": results, "context_sensitivity": sensitivity}


def aggregate(per_seed: list[dict]) -> dict:
    out = {"results": {}, "context_sensitivity": {}}
    for method in per_seed[0]["results"]:
        out["results"][method] = {
            key: {
                "mean": torch.tensor([s["results"][method][key] for s in per_seed]).mean().item(),
                "std": torch.tensor([s["results"][method][key] for s in per_seed]).std().item(),
            }
            for key in per_seed[0]["results"][method]
        }
    for method in per_seed[0]["context_sensitivity"]:
        values = torch.tensor([s["context_sensitivity"][method] for s in per_seed])
        out["context_sensitivity"][method] = {"mean": values.mean().item(), "std": values.std().item()}
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["results"])
    fig, ax = plt.subplots(figsize=(9, 6.5))
    height = 0.38
    values = []
    for offset, group in [(-height / 2, "majority"), (height / 2, "minority")]:
        means = [summary["results"][m][group]["mean"] for m in methods]
        stds = [summary["results"][m][group]["std"] for m in methods]
        values += means
        ax.barh([i + offset for i in range(len(methods))], means, height, xerr=stds, label=group, capsize=2)
    ax.set_yticks(range(len(methods)), [m.replace("HyperLoRA, ", "Hyper, ") for m in methods], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(min(values) - 0.1, max(values) + 0.05)
    ax.set_xlabel("held-out token NLL (lower is better)")
    ax.set_title("Imbalanced two-rule LM task (90% / 10%), mean ± std over seeds", fontsize=10)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@torch.no_grad()
def embedder_separability(seed: int = 0, sets: int = 20) -> dict[str, float]:
    """Between-group distance of set-mean embeddings over their within-group spread (≥ 1: the set encoder's input
    can tell the groups apart; ≪ 1: no hypernetwork on top of it can)."""
    out = {}
    for embedder in ("input_embeddings", "last_hidden"):
        config = HyperLoRAConfig(r=4, target_modules=TARGETS, set_encoder_input=embedder)
        model = HyperLoRAModel(tiny_llama(seed), config)
        generator = torch.Generator().manual_seed(seed + 1)
        means = {
            name: torch.stack([model.embed(input_ids=make_sequences(rule, 32, generator)).mean(0) for _ in range(sets)])
            for name, rule in RULES.items()
        }
        between = (means["majority"].mean(0) - means["minority"].mean(0)).norm()
        within = torch.cat([(m - m.mean(0)).norm(dim=1) for m in means.values()]).mean()
        out[embedder] = (between / within).item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ple-weights", type=float, nargs="+", default=[0.1, 10.0, 1000.0])
    parser.add_argument("--out", default="outputs/hyper")
    parser.add_argument("--diagnose-embedders", action="store_true", help="only print `embedder_separability`")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.diagnose_embedders:
        print("between / within group distance of set-mean embeddings:", embedder_separability())
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_seed = [run_seed(seed, args.steps, args.ple_weights) for seed in range(args.seeds)]
    summary = aggregate(per_seed)
    summary["seconds"] = time.perf_counter() - start
    summary["args"] = vars(args)
    (out / "fairness.json").write_text(json.dumps({"summary": summary, "per_seed": per_seed}, indent=1))
    plot(summary, out / "fairness.png")
    print(f"{summary['seconds']:.0f} s, {args.seeds} seeds, {args.steps} steps")
    print(f"{'method':42s} {'majority':>14s} {'minority':>14s} {'worst':>14s} {'gap':>14s}")
    for method, values in summary["results"].items():
        cells = [f"{values[k]['mean']:.3f}±{values[k]['std']:.3f}" for k in ("majority", "minority", "worst", "gap")]
        print(f"{method:42s} " + " ".join(f"{c:>14s}" for c in cells))
    print("context sensitivity:", {k: f"{v['mean']:.2e}" for k, v in summary["context_sensitivity"].items()})


if __name__ == "__main__":
    main()
