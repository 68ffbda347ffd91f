"""What ``hf-egt train`` and ``hf-egt evaluate`` say beside their report: how the evaluation rows were held out, in
words, and the summary the command prints."""

from __future__ import annotations

from collections.abc import Mapping


def held_out_sentence(record: Mapping) -> str:
    """How the eval rows of a ``split.json`` record were held out, in words."""
    if record.get("held_out") == "split":
        how = f"split {record['eval_split']!r} of the dataset"
    elif record.get("held_out") == "by person":
        how = f"{100 * record['eval_fraction']:.0f}% of the people of each group, seed {record['seed']}"
    else:
        how = f"{100 * record['eval_fraction']:.0f}% of the rows of each group, seed {record['seed']}"
    return f"{how} ({sum(record['eval_counts'].values())} rows)"


def summary(result: Mapping) -> str:
    """What a command prints: the runs' table, the held-out rows, what was left out, the files written, the push."""
    from hf_egt.core.metrics import runs_table

    lines = [runs_table(result["runs"])]
    if result.get("held_out"):
        lines.append(f"evaluation rows {result['held_out']}")
    for item in result.get("dropped", ()):
        lines.append(f"left out: {item}")
    for key, path in result.get("paths", {}).items():
        lines.append(f"{key}: {path}")
    if "commit_url" in result:
        lines.append(f"pushed: {result['commit_url']}")
    return "\n".join(lines)
