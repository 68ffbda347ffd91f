"""Every figure hf-egt draws, with one way to open and save them: an EGT report (per-group values with intervals,
floors and the gap), runs side by side (grouped bars) and group weights over training. The benchmarks draw their
study figures with the same ``pyplot`` / ``save_figure``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no screen needed; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 90) -> Path:
    """Lay out, write (PNG) and close a matplotlib figure; return its path. Titles wrap to the figure's width (a long
    title would be cut at both edges: ``tight_layout`` does not shrink text)."""
    for axes in figure.axes:
        axes.title.set_wrap(True)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path


def plot_report(report: dict, path, title: str | None = None) -> Path:
    """Write a PNG of ``report`` (from ``egt_report``): one point per group with its interval, the worst group in
    red, dashed lines at the best and worst values with the gap between them, the pooled value dotted. Each group's
    null floor is a grey bar; a value within its floor is drawn hollow, and the gap's label gives its p-value (and
    says "not significant" when it is not).

    Groups with no value (seen on one side only) are listed on the axis and marked "missing".
    """
    plt = pyplot()
    groups = list(report["per_group"])
    values = [report["per_group"][group] for group in groups]
    intervals = [report.get("ci", {}).get(group, [math.nan, math.nan]) for group in groups]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(groups) + 2), 3.6))
    for position, (group, value, (low, high)) in enumerate(zip(groups, values, intervals)):
        if math.isnan(value):
            axis.annotate(
                "missing", (position, 0), ha="center", va="bottom", color="grey", xycoords=("data", "axes fraction")
            )
            continue
        color = "tab:red" if group == report["worst_group"] else "tab:blue"
        face = "white" if report.get("within_floor", {}).get(group) else color
        if not (math.isnan(low) or math.isnan(high)):
            axis.errorbar(
                position, value, yerr=[[value - low], [high - value]], fmt="o", color=color, mfc=face, capsize=4
            )
        else:
            axis.plot(position, value, "o", color=color, mfc=face)
        floor = report.get("null_floor", {}).get(group, math.nan)
        if not math.isnan(floor):
            axis.hlines(floor, position - 0.3, position + 0.3, colors="grey", linewidth=3, alpha=0.6)
    finite = [value for value in values if not math.isnan(value)]
    low_line, high_line = min(finite), max(finite)
    for level in (low_line, high_line):
        axis.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    axis.annotate(
        "",
        xy=(len(groups) - 0.5, high_line),
        xytext=(len(groups) - 0.5, low_line),
        arrowprops={"arrowstyle": "<->", "color": "tab:red"},
    )
    label = f"gap = {report['gap']:.3g}"
    if not math.isnan(report.get("gap_p_value", math.nan)):
        label += f"\np = {report['gap_p_value']:.3g}" + ("" if report.get("gap_significant") else "\nnot significant")
    axis.text(len(groups) - 0.45, (low_line + high_line) / 2, label, color="tab:red", va="center")
    if not math.isnan(report.get("overall", math.nan)):
        axis.axhline(report["overall"], color="black", linestyle=":", linewidth=0.8, label="overall")
        axis.legend(loc="best", fontsize="small")
    axis.set_xticks(range(len(groups)), [str(group) for group in groups], rotation=20)
    axis.set_xlim(-0.5, len(groups) + 0.3)
    axis.set_ylabel(report["divergence"])
    axis.set_title(
        title or f"EGT: per-group {report['divergence']} (worst: {report['worst_group']}; grey: null floor)",
        fontsize="medium",
    )
    return save_figure(figure, path, dpi=120)


def plot_group_weights(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, title: str) -> Path:
    """The group weights over training (one line per group; ``group_weight_history``'s output), with uniform dotted."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    for group, points in history.items():
        axes.plot([step for step, _ in points], [weight for _, weight in points], marker=".", label=group)
    if history:
        axes.axhline(1 / len(history), color="gray", linestyle=":", linewidth=1, label="uniform")
    axes.set_xlabel("step")
    axes.set_ylabel("group weight")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def plot_runs(
    runs: Mapping[str, Mapping], path: str | Path, metric: str = "perplexity", title: str | None = None
) -> Path:
    """Grouped bars (one cluster per group, one bar per run) with each run's gap marked in the legend and as a band."""
    plt = pyplot()
    names = list(runs)
    groups = sorted({group for run in runs.values() for group in run["per_group"]})
    width = 0.8 / max(1, len(names))
    figure, axes = plt.subplots(figsize=(1.6 + 1.5 * len(groups) * max(1, len(names)) / 2, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        values = [runs[name]["per_group"].get(group, float("nan")) for group in groups]
        positions = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        color = colors[i % len(colors)]
        axes.bar(positions, values, width, color=color, label=f"{name} (gap {runs[name]['gap']:.2f})")
        finite = [v for v in values if not math.isnan(v)]
        if finite:
            axes.hlines([min(finite), max(finite)], -0.5, len(groups) - 0.5, colors=color, linestyles=":", linewidth=1)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([group.replace("_", " ") for group in groups], rotation=15, ha="right")
    axes.set_ylabel(f"{metric} per group (lower is better)")
    axes.set_title(title or f"{metric} per group; dotted lines: each run's best and worst group")
    axes.legend(fontsize=8)
    return save_figure(figure, path)
