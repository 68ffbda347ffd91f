"""Self-consuming loop (model autophagy) for a Gaussian and a two-component Gaussian mixture with known parameters.

Each generation fits the density model to the current data, samples a new data set of the same size from the fit,
and (optionally) mixes in a fraction of fresh real data. Estimators compared:

* MLE — closed form for a Gaussian (biased variance), EM for the mixture;
* hypernetwork — θ = H_φ(set): the DeepSets `SetEncoder` of `hf_egt.integrations.hyper` and a linear head, trained once
  on the
  likelihood of random sets drawn from a family of densities (amortised fitting: "refit" = apply H to the new set);
* hypernetwork + PLE — the same, trained with λ·`ple_penalty(H(Y), H(X))`, Y ~ p_{H(X)} sampled without gradient.

Reports per generation the median and interquartile range over chains of the fitted scale (variance collapse), the
fitted location (bias and random-walk spread), for the mixture the minority component's scale and weight, and the
share of chains whose fit diverged (non-finite or > 1e3; such a chain restarts from the true parameters); writes a
JSON (also means and standard deviations) and a PNG.

    python examples/hyper_autophagy.py --family gaussian --out outputs/hyper
    python examples/hyper_autophagy.py --family gmm --out outputs/hyper
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from hf_egt.integrations.hyper.encoders import SetEncoder
from hf_egt.integrations.hyper.ple import context_sensitivity, ple_penalty

LOG_2PI = math.log(2 * math.pi)
LOG_STD_BOUND = 5.0  # the hypernetworks' log-std is squashed into ±5: far outside the training range, never inf


def bounded(raw: torch.Tensor) -> torch.Tensor:
    return LOG_STD_BOUND * torch.tanh(raw / LOG_STD_BOUND)


# ---------------------------------------------------------------------------------------------------------------------
# density families: parameters θ as a (..., P) tensor


class Gaussian:
    name = "gaussian"
    num_params = 2  # mean, log std
    set_size = 16
    true = torch.tensor([0.0, 0.0])

    @staticmethod
    def log_prob(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        mean, log_std = theta[..., :1], theta[..., 1:2]
        return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI

    @staticmethod
    def sample(theta: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(*theta.shape[:-1], n, generator=generator)
        return theta[..., :1] + theta[..., 1:2].exp() * noise

    @staticmethod
    def random_params(count: int, generator: torch.Generator) -> torch.Tensor:
        # wide enough to cover what the loop visits (collapsed scales, drifted means)
        mean = torch.rand(count, generator=generator) * 6 - 3
        log_std = math.log(0.1) + torch.rand(count, generator=generator) * math.log(2 / 0.1)
        return torch.stack([mean, log_std], dim=-1)

    @staticmethod
    def mle(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(-1), x.std(-1, unbiased=False).log()], dim=-1)

    @staticmethod
    def raw_to_params(raw: torch.Tensor) -> torch.Tensor:
        return torch.cat([raw[..., :1], bounded(raw[..., 1:2])], -1)

    @staticmethod
    def summary(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"location": theta[..., 0], "scale": theta[..., 1].exp()}


class Mixture:
    """Two 1-D Gaussians; θ = (μ1, μ2, log σ1, log σ2, logit π2) with μ1 < μ2 (component 2 is the minority)."""

    name = "gmm"
    num_params = 5
    set_size = 64
    true = torch.tensor([0.0, 3.0, 0.0, 0.0, math.log(0.2 / 0.8)])

    @staticmethod
    def log_prob(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        means, log_stds = theta[..., 0:2], theta[..., 2:4]
        log_weights = torch.stack(
            [nn.functional.logsigmoid(-theta[..., 4]), nn.functional.logsigmoid(theta[..., 4])], -1
        )
        z = (x.unsqueeze(-1) - means.unsqueeze(-2)) / log_stds.exp().unsqueeze(-2)
        component = -0.5 * z**2 - log_stds.unsqueeze(-2) - 0.5 * LOG_2PI + log_weights.unsqueeze(-2)
        return torch.logsumexp(component, dim=-1)

    @staticmethod
    def sample(theta: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        minority = torch.rand(*theta.shape[:-1], n, generator=generator) < torch.sigmoid(theta[..., 4:5])
        means = torch.where(minority, theta[..., 1:2], theta[..., 0:1])
        stds = torch.where(minority, theta[..., 3:4], theta[..., 2:3]).exp()
        return means + stds * torch.randn(*theta.shape[:-1], n, generator=generator)

    @staticmethod
    def random_params(count: int, generator: torch.Generator) -> torch.Tensor:
        mean1 = torch.rand(count, generator=generator) * 2 - 1
        gap = 2 + torch.rand(count, generator=generator) * 2
        log_stds = (torch.rand(count, 2, generator=generator) * 2 - 1) * math.log(1.5)
        weight = 0.1 + torch.rand(count, generator=generator) * 0.4
        return torch.stack([mean1, mean1 + gap, log_stds[:, 0], log_stds[:, 1], torch.logit(weight)], dim=-1)

    @staticmethod
    def mle(x: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """EM from the 20% / 80% quantiles; components sorted by mean."""
        sorted_x = x.sort(-1).values
        n = x.shape[-1]
        means = torch.stack([sorted_x[..., n // 5], sorted_x[..., (4 * n) // 5]], -1)
        stds = x.std(-1, keepdim=True).expand(*x.shape[:-1], 2).clone()
        weights = torch.full_like(means, 0.5)
        for _ in range(iterations):
            z = (x.unsqueeze(-1) - means.unsqueeze(-2)) / stds.unsqueeze(-2)
            log_r = -0.5 * z**2 - stds.log().unsqueeze(-2) + weights.log().unsqueeze(-2)
            r = torch.softmax(log_r, dim=-1)
            counts = r.sum(-2).clamp_min(1e-6)
            weights = counts / n
            means = (r * x.unsqueeze(-1)).sum(-2) / counts
            var = (r * (x.unsqueeze(-1) - means.unsqueeze(-2)) ** 2).sum(-2) / counts
            stds = var.clamp_min(1e-4).sqrt()
        order = means.argsort(-1)
        means, stds, weights = means.gather(-1, order), stds.gather(-1, order), weights.gather(-1, order)
        return torch.stack(
            [
                means[..., 0],
                means[..., 1],
                stds[..., 0].log(),
                stds[..., 1].log(),
                torch.logit(weights[..., 1].clamp(1e-4, 1 - 1e-4)),
            ],
            -1,
        )

    @staticmethod
    def raw_to_params(raw: torch.Tensor) -> torch.Tensor:
        """Keep μ1 < μ2 so the second component is identifiable."""
        second = raw[..., :1] + nn.functional.softplus(raw[..., 1:2])
        return torch.cat([raw[..., :1], second, bounded(raw[..., 2:4]), raw[..., 4:]], -1)

    @staticmethod
    def summary(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "location": theta[..., 0],
            "scale": theta[..., 2].exp(),
            "minority_scale": theta[..., 3].exp(),
            "minority_weight": torch.sigmoid(theta[..., 4]),
        }


# ---------------------------------------------------------------------------------------------------------------------
# the hypernetwork density estimator


class DensityHypernetwork(nn.Module):
    """θ = head(SetEncoder(set)): the same DeepSets encoder as HyperLoRAModel, emitting the density's parameters."""

    def __init__(self, family, hidden: int = 64, context_dim: int = 32):
        super().__init__()
        self.family = family
        self.encoder = SetEncoder(2, hidden, context_dim, input_norm=False)
        self.head = nn.Linear(context_dim, family.num_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.stack([x, x**2 / 4], dim=-1)  # (..., n, 2)
        return self.family.raw_to_params(self.head(self.encoder(features)))


def train_hypernetwork(family, ple_weight: float, steps: int, seed: int) -> DensityHypernetwork:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DensityHypernetwork(family)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x = family.sample(family.random_params(128, generator), family.set_size, generator)
        theta_x = model(x)
        loss = -family.log_prob(x, theta_x).mean()
        if ple_weight > 0:
            with torch.no_grad():  # Y ~ p_{H(X)}, drawn without gradient
                y = family.sample(theta_x, family.set_size, generator)
            loss = loss + ple_weight * ple_penalty(model(y), theta_x, reduction="sum") / x.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# the self-consuming loop


@torch.no_grad()
def self_consuming_loop(family, estimator, generations: int, chains: int, fresh: float, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    n = family.set_size
    true = family.true.expand(chains, -1)
    data = family.sample(true, n, generator)
    history = []
    for _ in range(generations + 1):
        theta = estimator(data)
        finite = theta.isfinite().all(-1) & (theta.abs() < 1e3).all(-1)
        stats = {"diverged": 1 - finite.float().mean().item()}
        for key, value in family.summary(theta[finite]).items():
            true_value = family.summary(family.true)[key]
            q25, median, q75 = value.quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
            stats[key] = {
                "mean": value.mean().item(),
                "std": value.std().item(),
                "median": median,
                "q25": q25,
                "q75": q75,
                "true": true_value.item(),
            }
        history.append(stats)
        theta = torch.where(finite.unsqueeze(-1), theta, true)  # a diverged chain restarts from the truth
        synthetic = family.sample(theta, n, generator)
        fresh_count = round(fresh * n)
        if fresh_count:
            synthetic[:, :fresh_count] = family.sample(true, fresh_count, generator)
        data = synthetic
    return history


def plot(results: dict, family, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["scale", "location"] + (["minority_weight"] if family.name == "gmm" else [])
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3.2 * len(keys)), squeeze=False)
    for column, fresh in enumerate(sorted(results)):
        for row, key in enumerate(keys):
            ax = axes[row][column]
            for method, history in results[fresh].items():
                median = [h[key]["median"] for h in history]
                low, high = [h[key]["q25"] for h in history], [h[key]["q75"] for h in history]
                (line,) = ax.plot(median, label=method)
                ax.fill_between(range(len(median)), low, high, alpha=0.12, color=line.get_color())
            ax.axhline(history[0][key]["true"], color="black", lw=0.8, ls="--")
            ax.set_title(f"{key}, fresh data {float(fresh):.0%}")
            ax.set_xlabel("generation")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"Self-consuming loop, {family.name} (n={family.set_size} per generation; "
        "median and interquartile band over chains)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cell(stats: dict) -> str:
    return f"{stats['median']:.2f} [{stats['q25']:.2f}, {stats['q75']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["gaussian", "gmm"], default="gaussian")
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--chains", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000, help="hypernetwork training steps")
    parser.add_argument("--ple-weights", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--fresh", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/hyper")
    args = parser.parse_args()
    torch.set_num_threads(1)
    family = {"gaussian": Gaussian, "gmm": Mixture}[args.family]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    estimators = {"MLE": family.mle}
    sensitivity = {}
    probe = torch.Generator().manual_seed(123)
    probe_sets = family.sample(family.random_params(32, probe), family.set_size, probe)
    for weight in [0.0, *args.ple_weights]:
        model = train_hypernetwork(family, weight, args.steps, args.seed)
        name = "hypernetwork" if weight == 0 else f"hypernetwork + PLE λ={weight:g}"
        estimators[name] = model
        with torch.no_grad():
            sensitivity[name] = context_sensitivity(list(model(probe_sets))).item()
    results = {
        str(fresh): {
            name: self_consuming_loop(family, estimator, args.generations, args.chains, fresh, args.seed + 1)
            for name, estimator in estimators.items()
        }
        for fresh in args.fresh
    }
    elapsed = time.perf_counter() - start
    report = {
        "family": family.name,
        "args": vars(args),
        "seconds": elapsed,
        "context_sensitivity": sensitivity,
        "results": results,
    }
    (out / f"autophagy_{family.name}.json").write_text(json.dumps(report, indent=1))
    plot(results, family, out / f"autophagy_{family.name}.png")

    print(f"{family.name}: {elapsed:.0f} s; context sensitivity {sensitivity}")
    keys = list(family.summary(family.true))
    for fresh, by_method in results.items():
        print(f"\nfresh data {float(fresh):.0%}: generation 0 -> {args.generations} (median [q25, q75] over chains)")
        for method, history in by_method.items():
            cells = [f"{k} {_cell(history[0][k])} -> {_cell(history[-1][k])}" for k in keys]
            print(f"  {method:28s} " + " | ".join(cells) + f" | diverged {history[-1]['diverged']:.1%}")


if __name__ == "__main__":
    main()
