"""A picture of an EGT report: per-group values with their confidence intervals and the gap marked."""

from __future__ import annotations

import math
from pathlib import Path


def plot_report(report: dict, path, title: str | None = None) -> Path:
    """Write a PNG of ``report`` (from ``egt_report``): one point per group with its interval, the worst group in
    red, dashed lines at the best and worst values with the gap between them, the pooled value dotted. Each group's
    null floor is a grey bar; a value within its floor is drawn hollow, and the gap's label gives its p-value (and
    says "not significant" when it is not).

    Groups with no value (seen on one side only) are listed on the axis and marked "missing".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        wrap=True,  # to the figure's width: `tight_layout` does not shrink a long title, it would be cut
    )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
