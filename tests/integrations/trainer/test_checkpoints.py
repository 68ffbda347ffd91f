"""``hf_egt.integrations.trainer.checkpoints``: the newest checkpoint by step number, the pre-load checks of a
checkpoint (each error names the file and the problem), where the objective's state is found, and the run record
written into every saved checkpoint."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from hf_egt.core.objective import GroupObjective
from hf_egt.core.resume import RUN_RECORD_NAME
from hf_egt.core.serialization import save_tensors_with_metadata
from hf_egt.core.vocabulary import LEGACY_OBJECTIVE_STATE_NAMES, OBJECTIVE_STATE_NAME, objective_state_path
from hf_egt.integrations.trainer.checkpoints import RunRecordCallback, check_checkpoint, last_checkpoint


def make_checkpoint(folder, groups=("a", "b"), objective="minmax", state_name=OBJECTIVE_STATE_NAME):
    """A checkpoint folder as `EGTTrainer` writes it: trainer state, an objective state, an optimizer archive."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "trainer_state.json"), "w", encoding="utf-8") as handle:
        json.dump({"global_step": 3}, handle)
    GroupObjective(objective=objective, groups=list(groups)).save(os.path.join(folder, state_name))
    torch.save({"state": {}}, os.path.join(folder, "optimizer.pt"))
    return str(folder)


def test_last_checkpoint_orders_by_step_number_not_by_name(tmp_path):
    for step in (9, 10, 100, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-999").write_text("a file, not a folder")  # not a checkpoint
    (tmp_path / "checkpoint-final").mkdir()  # no step number
    assert last_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "checkpoint-100")
    assert max(f"checkpoint-{step}" for step in (9, 10, 100, 2)) == "checkpoint-9"  # what name order would pick


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_last_checkpoint_without_any_names_the_folder(tmp_path, make):
    folder = tmp_path / "out"
    if make == "empty":
        folder.mkdir()
        (folder / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no `checkpoint-<step>` folder in the output directory {folder}"):
        last_checkpoint(str(folder))


def test_a_complete_checkpoint_passes(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    check_checkpoint(folder)
    check_checkpoint(folder, ["a", "b"], "minmax")


def test_a_missing_folder_or_trainer_state_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`resume_from_checkpoint`: .*nowhere is not a folder"):
        check_checkpoint(str(tmp_path / "nowhere"))
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    os.remove(os.path.join(folder, "trainer_state.json"))
    with pytest.raises(FileNotFoundError, match=r"has no .*trainer_state\.json; it is not a checkpoint"):
        check_checkpoint(folder)


def test_a_broken_trainer_state_is_named(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    with open(os.path.join(folder, "trainer_state.json"), "w", encoding="utf-8") as handle:
        handle.write('{"global_step": ')
    with pytest.raises(ValueError, match=r"trainer_state\.json is not valid JSON"):
        check_checkpoint(folder)


def test_a_missing_objective_state_is_named(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    os.remove(os.path.join(folder, OBJECTIVE_STATE_NAME))
    with pytest.raises(FileNotFoundError, match=rf"has no group objective state .*{OBJECTIVE_STATE_NAME}"):
        check_checkpoint(folder)


def test_a_truncated_archive_is_found_before_the_objective_state_is_read(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    path = os.path.join(folder, "optimizer.pt")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"optimizer\.pt is unreadable or truncated"):
        check_checkpoint(folder)


def test_an_objective_state_not_written_by_hf_egt_is_named(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    from safetensors.torch import save_file

    save_file({"weights": torch.ones(2)}, os.path.join(folder, OBJECTIVE_STATE_NAME))
    with pytest.raises(ValueError, match=rf"{OBJECTIVE_STATE_NAME} was not written by hf_egt"):
        check_checkpoint(folder)


def test_other_groups_or_objective_are_named_with_both_sides(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3", groups=("a", "b"), objective="minmax")
    with pytest.raises(ValueError, match=r"saved for groups \['a', 'b'\], but this run has groups \['a', 'c'\]"):
        check_checkpoint(folder, ["a", "c"])
    with pytest.raises(ValueError, match=r"saved for groups \['a', 'b'\], but this run has groups \['b', 'a'\]"):
        check_checkpoint(folder, ["b", "a"])  # the order is the weights' order: it must match too
    with pytest.raises(ValueError, match=r"saved with objective 'minmax', but this run has objective 'reweight'"):
        check_checkpoint(folder, ["a", "b"], "reweight")


def test_a_state_saved_before_the_mode_rename_is_still_checked(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3")
    save_tensors_with_metadata(
        {"weights": torch.ones(2) / 2},
        {"groups": ["a", "b"], "mode": "minmax"},
        os.path.join(folder, OBJECTIVE_STATE_NAME),
    )
    check_checkpoint(folder, ["a", "b"], "minmax")
    with pytest.raises(ValueError, match="saved with objective 'minmax'"):
        check_checkpoint(folder, ["a", "b"], "reweight")


def test_objective_state_path_prefers_the_current_name_then_a_legacy_one_with_a_warning(tmp_path):
    folder = str(tmp_path)
    expected = os.path.join(folder, OBJECTIVE_STATE_NAME)
    assert objective_state_path(folder) == expected  # neither exists: the path a "missing" error names
    legacy = os.path.join(folder, LEGACY_OBJECTIVE_STATE_NAMES[0])
    GroupObjective(groups=["a", "b"]).save(legacy)
    with pytest.warns(FutureWarning, match=LEGACY_OBJECTIVE_STATE_NAMES[0]):
        assert objective_state_path(folder) == legacy
    check_checkpoint(make_checkpoint(tmp_path / "old", state_name=LEGACY_OBJECTIVE_STATE_NAMES[0]), ["a", "b"])
    GroupObjective(groups=["a", "b"]).save(expected)
    assert objective_state_path(folder) == expected  # the current name wins, without a warning


def test_run_record_is_written_into_the_saved_checkpoint_on_the_main_process_only(tmp_path):
    callback = RunRecordCallback({"model": "tiny", "groups": ["a", "b"]})
    args = SimpleNamespace(output_dir=str(tmp_path))
    (tmp_path / "checkpoint-4").mkdir()
    callback.on_save(args, SimpleNamespace(is_world_process_zero=False, global_step=4), None)
    assert not (tmp_path / "checkpoint-4" / RUN_RECORD_NAME).exists()
    callback.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=4), None)
    record = json.loads((tmp_path / "checkpoint-4" / RUN_RECORD_NAME).read_text())
    assert record == {"model": "tiny", "groups": ["a", "b"]}
    callback.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=5), None)  # no such folder
    assert not (tmp_path / "checkpoint-5").exists()
