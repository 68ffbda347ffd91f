"""Markdown tables of EGT reports and of per-group runs side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping


def _format(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def report_table(report: dict, digits: int = 3) -> str:
    """Markdown table of an ``egt_report``: per group the counts, the value with its interval, the noise floor and
    whether the value is within it; then the gap with its permutation p-value, and the pooled value."""
    level = round(100 * report.get("confidence", 0.95))
    lines = [
        f"| group | real | generated | {report['divergence']} | {level} % interval | null floor | within floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for group, value in report["per_group"].items():
        counts = report["counts"][group]
        low, high = report.get("ci", {}).get(group, [math.nan, math.nan])
        interval = "n/a" if math.isnan(low) else f"[{_format(low, digits)}, {_format(high, digits)}]"
        within = report.get("within_floor", {}).get(group)
        flag = "n/a" if within is None else ("**yes** (noise)" if within else "no")
        if group in report.get("missing", {}):
            flag = f"missing {report['missing'][group]} samples"
        floor = _format(report.get("null_floor", {}).get(group, math.nan), digits)
        lines.append(
            f"| {group} | {counts['real']} | {counts['generated']} | {_format(value, digits)} | {interval} | "
            f"{floor} | {flag} |"
        )
    p_value = report.get("gap_p_value", math.nan)
    verdict = {True: "significant", False: "**not significant**", None: "not tested"}[report.get("gap_significant")]
    lines.append(
        f"| **gap** (worst: {report['worst_group']}) | | | **{_format(report['gap'], digits)}** | "
        f"p = {_format(p_value, 3)}, {verdict} | | |"
    )
    lines.append(
        f"| overall | {sum(c['real'] for c in report['counts'].values())} | "
        f"{sum(c['generated'] for c in report['counts'].values())} | {_format(report['overall'], digits)} "
        "| | | |"
    )
    return "\n".join(lines)


def runs_table(runs: Mapping[str, Mapping], key: str = "per_group", value_format: str = "{:.2f}") -> str:
    """Markdown table: one row per group, one column per run, then gap, worst group and overall rows."""
    names = list(runs)
    groups = sorted({group for run in runs.values() for group in run[key]})
    lines = ["| group | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for group in groups:
        cells = [value_format.format(runs[name][key][group]) if group in runs[name][key] else "" for name in names]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines.append(
        "| **gap (max − min)** | " + " | ".join(f"**{value_format.format(runs[n]['gap'])}**" for n in names) + " |"
    )
    lines.append("| worst group | " + " | ".join(str(runs[n]["worst_group"]) for n in names) + " |")
    if all("overall" in runs[n] for n in names):
        lines.append("| overall | " + " | ".join(value_format.format(runs[n]["overall"]) for n in names) + " |")
    return "\n".join(lines)
