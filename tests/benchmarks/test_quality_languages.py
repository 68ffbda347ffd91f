"""``benchmarks/quality_languages.py``: the test-stage tables, on synthetic cells (hand-computed values; no
model)."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.quality_languages import (
    LANGUAGE_METHODS,
    PAIRED_COMPARISONS,
    paired_differences,
    paired_line,
    unit_table,
    unit_values,
)


def cell(method: str, seed: int, nll: dict[str, float], bpb: dict[str, float]) -> dict:
    return {
        "method": method,
        "seed": seed,
        "result": {"sequence_nll": {"per_group": nll}, "bits_per_byte": {"per_group": bpb}, "per_group": bpb},
    }


CELLS = [
    cell("erm", 0, {"en": 80.0, "de": 156.0, "fr": 140.0}, {"en": 1.0, "de": 2.0, "fr": 1.5}),
    cell("erm", 1, {"en": 79.0, "de": 155.0, "fr": 141.0}, {"en": 1.1, "de": 2.2, "fr": 1.4}),
    cell("minmax_sequence", 0, {"en": 86.0, "de": 146.0, "fr": 138.0}, {"en": 1.2, "de": 1.9, "fr": 1.3}),
    cell("minmax_sequence", 1, {"en": 85.0, "de": 147.0, "fr": 137.0}, {"en": 1.3, "de": 1.8, "fr": 1.3}),
]


def test_paired_differences_are_per_seed_differences():
    found = paired_differences(CELLS, "minmax_sequence", "erm")
    assert found["seeds"] == [0, 1]
    mean, std = found["per_group"]["de"]
    assert mean == pytest.approx(statistics.fmean([146 - 156, 147 - 155]))
    assert std == pytest.approx(statistics.stdev([-10.0, -8.0]))
    assert paired_differences(CELLS, "minmax_sequence", "stratified_erm") == {}


def test_paired_line_shows_a_spread_only_over_several_seeds():
    two = paired_line("minmax_sequence - erm", paired_differences(CELLS, "minmax_sequence", "erm"))
    expected = "en +6.00 ± 0.00, de -9.00 ± 1.41, fr -3.00 ± 1.41"
    assert two == f"Paired test NLL per verse, minmax_sequence - erm (seeds [0, 1]): {expected}."
    one = paired_line("minmax_sequence - erm", paired_differences(CELLS[::2], "minmax_sequence", "erm"))
    assert one == "Paired test NLL per verse, minmax_sequence - erm (seeds [0]): en +6.00, de -10.00, fr -2.00."


def test_paired_comparisons_name_study_methods_against_another():
    for method, control in PAIRED_COMPARISONS:
        assert method in LANGUAGE_METHODS and control in LANGUAGE_METHODS and method != control


def test_unit_table_computes_worst_and_gap_per_seed_first():
    table = unit_table(CELLS, None, "en", "bits_per_byte").splitlines()
    assert table[0] == "| method | en | de | fr | worst | gap | seeds |"
    erm = table[2].split(" | ")
    # worst per seed: 2.0, 2.2 -> 2.100 ± 0.141; gap per seed: 1.0, 1.1 -> 1.050 ± 0.071
    assert erm[4] == f"{statistics.fmean([2.0, 2.2]):.3f} ± {statistics.stdev([2.0, 2.2]):.3f}"
    assert erm[5] == f"{statistics.fmean([1.0, 1.1]):.3f} ± {statistics.stdev([1.0, 1.1]):.3f}"
    assert table[3].startswith("| minmax_sequence | 1.250 ± 0.071 |")


def test_test_values_reads_each_unit():
    assert unit_values(CELLS[0], "sequence_nll")["de"] == 156.0
    assert unit_values(CELLS[0], "perplexity")["fr"] == 1.5
    with pytest.raises(KeyError):
        unit_values(CELLS[0], "egt")


def test_screen_counts_the_test_cells_it_has_no_cell_of(tmp_path):
    from benchmarks.cells import cell_path, write_json
    from benchmarks.quality_languages import stage_cells

    write_json(cell_path(tmp_path, "screen", "stratified_erm", 0), {"method": "stratified_erm", "seed": 0, "at": "s"})
    for method, seed in (("stratified_erm", 0), ("minmax_sequence", 0), ("erm", 1)):
        write_json(cell_path(tmp_path, "test", method, seed), {"method": method, "seed": seed, "at": "t"})
    screen = [(c["method"], c["seed"], c["at"]) for c in stage_cells(tmp_path, "screen")]
    # the screen's own cell wins over the test cell of the same (method, seed); LANGUAGE_METHODS order
    assert screen == [("erm", 1, "t"), ("stratified_erm", 0, "s"), ("minmax_sequence", 0, "t")]
    assert [c["at"] for c in stage_cells(tmp_path, "test")] == ["t", "t", "t"]  # the test stage reads only its own


def test_each_tagged_method_has_its_language_tag_and_each_control_one_tag_for_all():
    from benchmarks.quality_languages import TAGGED_METHODS, language_tag

    for method in TAGGED_METHODS:
        tags = {language_tag(method, language) for language in ("en", "fr", "es", "de")}
        assert len(tags) == (1 if method.startswith("neutral_") else 4), method
    # each conditional method has its control: the same training with one tag for every language
    for method, spec in TAGGED_METHODS.items():
        if not method.startswith("neutral_"):
            assert TAGGED_METHODS[f"neutral_{method}"] == spec
