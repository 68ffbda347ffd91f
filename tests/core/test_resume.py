"""hf_egt.core.resume: the checkpoint folders of an output directory, which resume and checkpoint rotation share."""

from __future__ import annotations

from hf_egt.core.resume import checkpoints_of


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    for step in (10, 9, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()  # not a step: neither resumed from nor rotated away
    (tmp_path / "checkpoint-7").write_text("a file, not a checkpoint folder")
    assert checkpoints_of(tmp_path) == [str(tmp_path / f"checkpoint-{step}") for step in (9, 10, 100)]


def test_a_missing_or_empty_folder_has_no_checkpoints(tmp_path):
    assert checkpoints_of(tmp_path / "not-there") == []
    assert checkpoints_of(tmp_path) == []


def test_the_recorded_sampling_exponent_is_the_alpha_the_sampling_uses():
    from hf_egt.core.resume import recorded_sampling_exponent

    assert recorded_sampling_exponent("temperature", None) == 0.5
    assert recorded_sampling_exponent("stratified", None) == 0.0
    assert recorded_sampling_exponent("stratified", -0.25) == -0.25
    assert recorded_sampling_exponent("natural", 0.3) is None  # natural sampling uses no alpha


def test_a_sampling_exponent_is_compared_only_where_a_sampling_uses_it(tmp_path):
    import pytest

    from hf_egt.core.resume import GROUP_OBJECTIVE_RECORD_FIELDS, RecordField, check_run_record, write_run_record

    fields = {key: RecordField(*spec) for key, spec in GROUP_OBJECTIVE_RECORD_FIELDS.items()}
    # an earlier version recorded 0.5 under natural sampling; this run records None: nothing to compare
    write_run_record({"group_sampling": "natural", "group_sampling_exponent": 0.5}, tmp_path / "natural")
    record = {"group_sampling": "natural", "group_sampling_exponent": None}
    assert check_run_record(tmp_path / "natural", record, fields) == []
    # stratified steps with another alpha are another run
    write_run_record({"group_sampling": "stratified", "group_sampling_exponent": 0.0}, tmp_path / "stratified")
    record = {"group_sampling": "stratified", "group_sampling_exponent": -0.25}
    with pytest.raises(ValueError, match=r"`--group_sampling_exponent`: .* saved with 0\.0, this run has -0\.25"):
        check_run_record(tmp_path / "stratified", record, fields)
    # a switch from natural to temperature sampling is caught by both entries; the exponent is compared too
    record = {"group_sampling": "temperature", "group_sampling_exponent": 0.5}
    accepted = check_run_record(tmp_path / "natural", record, fields, allow_changes=["group_sampling"])
    saved = f"{tmp_path / 'natural'} was saved with 'natural', this run has 'temperature'"
    assert accepted == [f"`--group_sampling` changed on resume: {saved}"]
