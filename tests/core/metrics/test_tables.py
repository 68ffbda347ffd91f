"""``hf_egt.core.metrics.tables``: the markdown tables read back to the numbers of the report or runs they show."""

import math

import pytest
import torch

from hf_egt.core.metrics import egt_report, report_table, runs_table


def parse(table: str) -> tuple[list[str], list[list[str]]]:
    """``(header cells, body rows of cells)`` of a markdown table; every row must have the header's cell count."""
    lines = table.splitlines()
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert set(rows[1]) <= {"---", "---:", ":---:"}
    assert all(len(row) == len(rows[0]) for row in rows)
    return rows[0], rows[2:]


def number(cell: str) -> float:
    return math.nan if cell == "n/a" else float(cell.strip("*"))


def close(cell: str, value: float, digits: int = 3) -> bool:
    shown = number(cell)
    return math.isnan(value) and math.isnan(shown) or abs(shown - value) <= 0.5 * 10**-digits + 1e-12


@pytest.fixture(scope="module")
def report():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(95, 2, generator=generator, dtype=torch.float64)
    generated = torch.randn(80, 2, generator=generator, dtype=torch.float64) + torch.tensor([0.0, 0.8])
    real_groups = ["a"] * 40 + ["b"] * 40 + ["only_real"] * 15
    generated_groups = ["a"] * 35 + ["b"] * 45
    with pytest.warns(UserWarning, match="only_real"):
        return egt_report(
            real,
            real_groups,
            generated_features=generated,
            generated_groups=generated_groups,
            divergence="js",
            n_bootstrap=10,
            n_null=10,
            n_permutations=19,
            confidence=0.9,
        )


def test_report_table_reads_back_to_the_report(report):
    header, rows = parse(report_table(report))
    assert header[3] == "js" and header[4] == "90 % interval"
    by_group = {row[0]: row for row in rows[: len(report["per_group"])]}
    assert list(by_group) == list(report["per_group"])
    for group, row in by_group.items():
        counts = report["counts"][group]
        assert (int(row[1]), int(row[2])) == (counts["real"], counts["generated"])
        assert close(row[3], report["per_group"][group]) and close(row[5], report["null_floor"][group])
        low, high = report["ci"][group]
        if math.isnan(low):
            assert row[4] == "n/a"
        else:
            shown_low, shown_high = row[4].strip("[]").split(", ")
            assert close(shown_low, low) and close(shown_high, high)
    assert by_group["only_real"][6] == "missing generated samples"
    within = {True: "**yes** (noise)", False: "no"}
    assert all(by_group[g][6] == within[report["within_floor"][g]] for g in ("a", "b"))
    gap, overall = rows[-2], rows[-1]
    assert gap[0] == f"**gap** (worst: {report['worst_group']})" and close(gap[3], report["gap"])
    assert close(gap[4].split(",")[0].removeprefix("p = "), report["gap_p_value"])
    verdict = "significant" if report["gap_significant"] else "**not significant**"
    assert gap[4].endswith(f", {verdict}")
    assert int(overall[1]) == 95 and int(overall[2]) == 80 and close(overall[3], report["overall"])


def test_report_table_says_what_was_not_computed():
    report = {
        "divergence": "mauve",
        "per_group": {"x": 0.5, "y": math.nan},
        "counts": {"x": {"real": 3, "generated": 4}, "y": {"real": 0, "generated": 2}},
        "missing": {"y": "real"},
        "gap": math.nan,
        "worst_group": None,
        "overall": 0.25,
        "gap_significant": None,
    }
    header, rows = parse(report_table(report, digits=2))
    assert header[4] == "95 % interval"  # the default level where the report has none
    assert rows[0] == ["x", "3", "4", "0.50", "n/a", "n/a", "n/a"]
    assert rows[1][3:] == ["n/a", "n/a", "n/a", "missing real samples"]
    assert rows[2][3:5] == ["**n/a**", "p = n/a, not tested"]
    assert rows[3][:4] == ["overall", "3", "6", "0.25"]


def test_runs_table_reads_back_to_the_runs():
    runs = {
        "base": {"per_group": {"b": 2.0, "a": 1.25}, "gap": 0.75, "worst_group": "b", "overall": 1.5},
        "tuned": {"per_group": {"a": 1.0, "c": 3.125}, "gap": 2.125, "worst_group": "c", "overall": 2.0},
    }
    header, rows = parse(runs_table(runs, value_format="{:.3f}"))
    assert header == ["group", "base", "tuned"]
    body = {row[0]: row[1:] for row in rows}
    assert list(body)[:3] == ["a", "b", "c"]  # groups sorted, every run's groups shown
    for column, run in enumerate(runs.values()):
        for group in ("a", "b", "c"):
            cell = body[group][column]
            assert (cell == "") if group not in run["per_group"] else close(cell, run["per_group"][group])
        assert close(body["**gap (max − min)**"][column], run["gap"])
        assert body["worst group"][column] == run["worst_group"]
        assert close(body["overall"][column], run["overall"])
    del runs["tuned"]["overall"]  # no overall row unless every run has one
    assert "overall" not in {row[0] for row in parse(runs_table(runs))[1]}
