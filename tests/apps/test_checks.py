"""hf_egt.apps.checks: the one resume rule and the one output-folder rule of `hf-egt train` and `train-diffusion`."""

from __future__ import annotations

import pytest

from hf_egt.apps import checks


def _checkpoints(folder, *names):
    for name in names:
        (folder / name).mkdir(parents=True)
    return folder


@pytest.mark.parametrize("value", [None, False, "false", "False", "no", "0", ""])
def test_no_resume_is_a_new_run(tmp_path, value):
    _checkpoints(tmp_path, "checkpoint-3")
    assert checks.resolve_resume(value, tmp_path) is None


@pytest.mark.parametrize("value", [True, "true", "yes", "1", "latest", "LATEST"])
def test_true_or_latest_is_the_newest_checkpoint_by_step(tmp_path, value):
    _checkpoints(tmp_path, "checkpoint-9", "checkpoint-10", "checkpoint-2", "checkpoint-x", "checkpoint-11-old")
    (tmp_path / "checkpoint-20").write_text("a file, not a checkpoint folder")
    assert checks.resolve_resume(value, tmp_path) == str(tmp_path / "checkpoint-10")  # 10 > 9: by step, not by name


@pytest.mark.parametrize("value", ["true", "latest"])
def test_true_or_latest_without_a_checkpoint_is_an_error_naming_the_option_and_the_ways_out(tmp_path, value):
    """The safer rule (train's): a resume that finds nothing to resume does not silently start a new run."""
    for output_dir in (tmp_path / "missing", _checkpoints(tmp_path / "empty", "runs")):
        with pytest.raises(FileNotFoundError) as error:
            checks.resolve_resume(value, output_dir)
        message = str(error.value)
        assert message.startswith(f"`--resume_from_checkpoint` {value!r}: no `checkpoint-<step>` folder")
        assert str(output_dir) in message and "leave out `--resume_from_checkpoint`" in message


def test_a_path_must_be_a_folder(tmp_path):
    folder = _checkpoints(tmp_path, "checkpoint-4") / "checkpoint-4"
    assert checks.resolve_resume(str(folder), tmp_path) == str(folder)
    with pytest.raises(
        FileNotFoundError, match=r"`--resume_from_checkpoint`: no such checkpoint folder .*checkpoint-5"
    ):
        checks.resolve_resume(str(tmp_path / "checkpoint-5"), tmp_path)


def test_allowed_changes_need_a_resume():
    checks.check_resume_allow_changes([], None)
    checks.check_resume_allow_changes(["dataset"], "out/checkpoint-2")
    with pytest.raises(ValueError, match="`--resume_allow_changes` only applies with `--resume_from_checkpoint`"):
        checks.check_resume_allow_changes(["dataset"], None)


def test_a_new_run_refuses_a_folder_holding_another_runs_checkpoints_or_outputs(tmp_path):
    assert checks.check_output_dir(tmp_path / "new", None, overwrite=False) == []
    (tmp_path / "notes.txt").write_text("not a run's output")
    assert checks.check_output_dir(tmp_path, None, overwrite=False) == []
    (tmp_path / "group_objective.safetensors").write_bytes(b"")
    _checkpoints(tmp_path, "checkpoint-2")
    with pytest.raises(ValueError, match=r"already holds the outputs of a run \(checkpoint-2, group_objective"):
        checks.check_output_dir(tmp_path, None, overwrite=False)
    assert checks.check_output_dir(tmp_path, None, overwrite=True) == ["checkpoint-2", "group_objective.safetensors"]
    assert checks.check_output_dir(tmp_path, str(tmp_path / "checkpoint-2"), overwrite=False) == []  # a resume
    checks.remove_checkpoints(tmp_path)
    assert not (tmp_path / "checkpoint-2").exists() and (tmp_path / "notes.txt").exists()


@pytest.mark.parametrize("command", ["train", "train-diffusion"])
def test_both_training_commands_resolve_the_resume_with_this_rule(tmp_path, monkeypatch, command):
    from hf_egt.apps.cli import main

    seen = []

    def resolve(value, output_dir):
        seen.append((value, str(output_dir)))
        raise LookupError("resolved")

    monkeypatch.setattr(checks, "resolve_resume", resolve)
    out = str(tmp_path / "out")
    with pytest.raises(LookupError, match="resolved"):
        main([command, "--model_name_or_path", "m", "--dataset", "d", "--output_dir", out, "--resume_from_checkpoint",
              "latest"])  # fmt: skip
    assert seen == [("latest", out)]


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [("learning_rate", -1.0, ">= 0"), ("adam_beta1", 1.0, r"in \[0, 1\)"), ("warmup_steps", -2, ">= 0")],
)
def test_the_optimizer_numbers_are_checked_by_one_rule_for_both_commands(name, value, rule):
    from types import SimpleNamespace

    options = dict(learning_rate=1e-4, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)
    options["warmup_steps"] = 0
    checks.check_optimizer_options(SimpleNamespace(**options))
    with pytest.raises(ValueError, match=rf"`--{name}` must be {rule}, got {value}"):
        checks.check_optimizer_options(SimpleNamespace(**{**options, name: value}))
