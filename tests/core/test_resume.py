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
