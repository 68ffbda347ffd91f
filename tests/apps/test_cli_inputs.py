"""Bad input to ``hf-egt``: one line ``hf-egt: error: ...`` naming the argument or file, exit status 2, before any
model is loaded and without touching existing files; plus exact resume, refusal to overwrite, no token in any file,
and held-out rows that ``evaluate`` reuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import REPO_ROOT
from tests.conftest import GROUPS
from tests.integrations.test_hub import FakeHub

BASE_TRAIN = ["--group_column", "gender", "--report_to", "none", "--max_steps", "2", "--use_cpu"]
BASE_TRAIN += ["--lora_r", "2", "--lora_target_modules", "q_proj", "v_proj", "--per_device_train_batch_size", "4"]


def _rows(extra: list[dict] | None = None, drop: str | None = None) -> list[dict]:
    rows = [{"text": GROUPS["a"].format(i), "gender": "a", "id": i} for i in range(24)]
    rows += [{"text": GROUPS["b"].format(i), "gender": "b", "id": 100 + i} for i in range(12)]
    return [row for row in rows if row["gender"] != drop] + (extra or [])


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def _checkpoint(
    folder: Path,
    groups=("a", "b"),
    truncate: bool = False,
    objective: bool = True,
    record: dict | None = None,
    truncated_state: str | None = None,
) -> Path:
    """A hand-made checkpoint folder: trainer state, a LoRA weights file, the optimizer / scheduler / RNG states
    (``torch.save`` archives; ``truncated_state`` names one to cut short), the group objective's state and, given,
    a compatibility ``record``."""
    from safetensors.torch import save_file

    from hf_egt.core.objective import GroupObjective
    from hf_egt.core.resume import write_run_record

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    weights = folder / "adapter_model.safetensors"
    save_file({"lora_A": torch.zeros(64, 64)}, str(weights))
    if truncate:
        weights.write_bytes(weights.read_bytes()[:200])
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "optimizer.bin", "random_states_0.pkl"):
        torch.save({"state": torch.zeros(64)}, folder / name)
    if truncated_state is not None:
        (folder / truncated_state).write_bytes((folder / truncated_state).read_bytes()[:300])
    if objective:
        GroupObjective(groups=list(groups), objective="minmax").save(str(folder / "group_objective.safetensors"))
    if record is not None:
        write_run_record(record, folder)
    return folder


def _diffusion_checkpoint(
    folder: Path,
    truncated: bool = True,
    groups=(0, 1),
    record: dict | None = None,
    truncated_state: str | None = None,
) -> Path:
    """A diffusion-script checkpoint saved for ``groups`` (default [0, 1]), with a ``model.safetensors`` (truncated by
    default), accelerate's optimizer / RNG states (``truncated_state`` names one to cut short) and, given, a
    compatibility ``record``."""
    from safetensors.torch import save_file

    from hf_egt.core.resume import write_run_record
    from hf_egt.integrations.diffusion.buckets import NoiseLevelGroupObjective

    folder.mkdir(parents=True)
    objective = NoiseLevelGroupObjective(1, groups=list(groups), objective="minmax")
    objective.save(str(folder / "group_objective.safetensors"))
    save_file({"weight": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    if truncated:
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        torch.save({"state": torch.zeros(64)}, folder / name)
    if truncated_state is not None:
        (folder / truncated_state).write_bytes((folder / truncated_state).read_bytes()[:300])
    if record is not None:
        write_run_record(record, folder)
    return folder


DIGITS = tuple(range(10))  # the groups of `digits-imbalanced`


def _split_folder(tmp: Path) -> Path:
    """A dataset folder with train and test files; test holds a group ``c`` absent from train."""
    folder = tmp / "splits"
    _jsonl(folder / "train.jsonl", _rows())
    _jsonl(folder / "test.jsonl", _rows([{"text": "a new kind of row", "gender": "c", "id": 999}]))
    return folder


def _split_folder_without_b(tmp: Path) -> Path:
    folder = tmp / "splits_no_b"
    _jsonl(folder / "train.jsonl", _rows())
    _jsonl(folder / "test.jsonl", _rows(drop="b"))
    return folder


def _adapter_with_foreign_split(tmp: Path, data: Path) -> Path:
    """An adapter folder whose split.json was recorded on other data (one row changed)."""
    from hf_egt.apps.data import load_grouped_splits

    other = _jsonl(tmp / "other.jsonl", _rows()[1:] + [{"text": "changed row", "gender": "a", "id": -1}])
    record = load_grouped_splits(str(other), group_column="gender").split
    folder = tmp / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "split.json").write_text(json.dumps(record))
    return folder


def _encoder(tmp: Path) -> Path:
    from transformers import DistilBertConfig

    folder = tmp / "encoder"
    DistilBertConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, hidden_dim=16).save_pretrained(folder)
    return folder


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


# Each row: (id, command, extra argv built from (tmp, out, data), message fragment (regex)).
# `out` is an output folder holding a file of an earlier run (notes.txt) that must stay untouched.
MATRIX = [
    # resume and output folder
    ("resume-missing", "train", lambda t, o, d: ["--resume_from_checkpoint", o / "checkpoint-99"],
     r"`--resume_from_checkpoint`: no such checkpoint folder .*checkpoint-99"),
    ("resume-true-none", "train", lambda t, o, d: ["--resume_from_checkpoint", "true"],
     r"`--resume_from_checkpoint` 'true': no `checkpoint-<step>` folder in the output directory .*out' to resume from; "
     r"pass a `checkpoint-<step>` folder, another `--output_dir`, or leave out `--resume_from_checkpoint`"),
    ("resume-truncated", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2",
     truncate=True)], r"checkpoint-2/adapter_model\.safetensors is unreadable or truncated"),
    ("resume-other-groups", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2",
     groups=("a", "c"))], r"group_objective\.safetensors was saved for groups \['a', 'c'\].*\['a', 'b'\]"),
    ("resume-no-objective", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2",
     objective=False)], r"has no group objective state .*group_objective\.safetensors"),
    ("output-dir-has-checkpoints", "train", lambda t, o, d: [_checkpoint(o / "checkpoint-4") and "--seed", "1"],
     r"`--output_dir`: .* already holds the outputs of a run \(checkpoint-4.*--overwrite_output_dir"),
    ("output-dir-has-adapter", "train", lambda t, o, d: [(o / "report.json").write_text("{}") and "--seed", "1"],
     r"`--output_dir`: .* already holds the outputs of a run \(report\.json\)"),
    ("resume-other-dataset", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2",
     record={"dataset": {"name": "other.jsonl", "sha256": "0" * 64}})],
     r"`--dataset`: .*checkpoint-2 was saved with 'other\.jsonl' \(training rows sha256 000000000000\), this run has "
     r"'.*bios\.jsonl' .*--resume_allow_changes dataset"),
    ("resume-other-lora-r", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2",
     record={"lora_r": 4})], r"`--lora_r`: .*checkpoint-2 was saved with 4, this run has 2; resume with the saved"),
    ("resume-other-step-size", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2",
     record={"group_step_size": 0.5})], r"`--group_step_size`: .* saved with 0\.5, this run has 0\.01.*"
     r"--resume_allow_changes group_step_size"),
    ("resume-allow-shape", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(o / "checkpoint-2"),
     "--resume_allow_changes", "lora_r"], r"`--resume_allow_changes`: 'lora_r' is not an option a resume may change"),
    ("resume-allow-without-resume", "train", lambda t, o, d: ["--resume_allow_changes", "dataset"],
     r"`--resume_allow_changes` only applies with `--resume_from_checkpoint`"),
    ("resume-truncated-optimizer", "train", lambda t, o, d: ["--resume_from_checkpoint", _checkpoint(
     o / "checkpoint-2", truncated_state="optimizer.pt")], r"checkpoint-2/optimizer\.pt is unreadable or truncated"),
    ("resume-truncated-rng", "train", lambda t, o, d: ["--resume_from_checkpoint", "true", _checkpoint(
     o / "checkpoint-2", truncated_state="rng_state.pth") and "--seed", "42"],
     r"checkpoint-2/rng_state\.pth is unreadable or truncated"),
    ("overwrite-bad-learning-rate", "train", lambda t, o, d: [_checkpoint(o / "checkpoint-4") and
     "--overwrite_output_dir", "--learning_rate", "-1"], r"`--learning_rate` must be >= 0, got -1\.0"),
    # options
    ("scheduler-kwargs", "train", lambda t, o, d: ["--lr_scheduler_type", "cosine_with_min_lr"],
     r"`--lr_scheduler_type`: 'cosine_with_min_lr' cannot be built with `--lr_scheduler_kwargs` \{\}"),
    ("optim-not-installed", "train", lambda t, o, d: ["--optim", "adamw_bnb_8bit"],
     r"`--optim`: 'adamw_bnb_8bit' cannot be built .*bitsandbytes"),
    ("adam-beta", "train", lambda t, o, d: ["--adam_beta2", "1.5"], r"`--adam_beta2` must be in \[0, 1\)"),
    ("report-to-not-installed", "train", lambda t, o, d: ["--report_to", "tensorboard"],
     r"`--report_to`: 'tensorboard' is not installed .*`--report_to none`"),
    ("report-to-unknown", "train", lambda t, o, d: ["--report_to", "tensorbored"],
     r"`--report_to`: unknown integration 'tensorbored'; valid: .*'tensorboard'"),
    ("push-offline", "train", lambda t, o, d: ["--push_to_hub", "--hub_model_id", "me/x", "--hub_token", "hf_x"],
     r"`--push_to_hub`: the Hub is offline \(HF_HUB_OFFLINE is set\)"),
    ("max-steps-0", "train", lambda t, o, d: ["--max_steps", "0"], r"`--max_steps` 0 .* trains nothing"),
    ("ple-without-hyper", "train", lambda t, o, d: ["--ple_weight", "0.1"], r"`--ple_weight` 0\.1 .* needs `--hyper`"),
    ("hyper-option-without-hyper", "train", lambda t, o, d: ["--hyper_context_dim", "8"],
     r"`--hyper_context_dim` 8 is a HyperLoRA option: it needs `--hyper`"),
    ("hyper-option-value", "train", lambda t, o, d: ["--hyper", "--ple_every", "0"],
     r"`--ple_every` must be a positive integer, got 0"),
    ("abbreviated-secret", "train", lambda t, o, d: ["--hub_tok", "hf_abbrev_secret"],
     r"unrecognized arguments: --hub_tok \(run"),
    ("eval-fraction", "train", lambda t, o, d: ["--eval_fraction", "1.5"], r"`--eval_fraction` must be in \(0, 1\)"),
    ("push-without-repo", "train", lambda t, o, d: ["--push_to_hub"], r"`--push_to_hub` needs `--hub_model_id`"),
    ("push-without-token", "train", lambda t, o, d: ["--push_to_hub", "--hub_model_id", "me/x"],
     r"Pushing to the Hub needs a token: pass `--hub_token`"),
    ("lora-rank-0", "train", lambda t, o, d: ["--lora_r", "0"], r"`--lora_r` must be a positive integer"),
    ("lora-dropout", "train", lambda t, o, d: ["--lora_dropout", "1.5"], r"`--lora_dropout` must be in \[0, 1\)"),
    ("lora-target-modules", "train", lambda t, o, d: ["--lora_target_modules", "q_proj", "qkv"],
     r"`--lora_target_modules`: \['qkv'\] match no layer .*'q_proj'"),
    ("max-train-per-group-0", "train", lambda t, o, d: ["--max_train_per_group", "0"],
     r"`--max_train_per_group` must be >= 1"),
    ("hyper-context-size", "train", lambda t, o, d: ["--hyper", "--hyper_context_size", "0"],
     r"`--hyper_context_size` must be >= 1"),
    ("sampling-exponent", "train", lambda t, o, d: ["--group_sampling", "stratified", "--group_sampling_exponent",
     "1.5"], r"`--group_sampling_exponent` must be in \[-1, 1\] .*got 1\.5"),
    ("diffusion-sampling-exponent", "train-diffusion", lambda t, o, d: ["--group_sampling_exponent", "-2"],
     r"`--group_sampling_exponent` must be in \[-1, 1\] .*got -2\.0"),
    # model
    ("model-missing", "train", lambda t, o, d: ["--model_name_or_path", t / "no" / "model"],
     r"`--model_name_or_path`: no such file or folder .*no/model"),
    ("model-unknown-hub-id", "train", lambda t, o, d: ["--model_name_or_path", "nobody/no-model"],
     r"`--model_name_or_path`: cannot load 'nobody/no-model': not a local folder with a config\.json"),
    ("model-invalid-name", "train", lambda t, o, d: ["--model_name_or_path", "my model!"],
     r"`--model_name_or_path`: cannot load 'my model!'.*alphanumeric"),
    ("model-not-causal", "train", lambda t, o, d: ["--model_name_or_path", _encoder(t)],
     r"'distilbert' model, which has no causal-LM head"),
    # data
    ("unknown-dataset", "train", lambda t, o, d: ["--dataset", "nobody/nothing"],
     r"`--dataset`: unknown dataset 'nobody/nothing'"),
    ("dataset-file-type", "train", lambda t, o, d: ["--dataset", (t / "d.txt").write_text("x") and t / "d.txt"],
     r"`--dataset`: unsupported file type '\.txt'"),
    ("train-split", "train", lambda t, o, d: ["--train_split", "training"],
     r"`--train_split`: split 'training' is not in .* valid splits are \['train'\]"),
    ("eval-split", "train", lambda t, o, d: ["--eval_split", "dev"], r"`--eval_split`: split 'dev' is not in"),
    ("group-column", "train", lambda t, o, d: ["--group_column", "sex"], r"`--group_column`: column 'sex' is not in"),
    ("text-column-type", "train", lambda t, o, d: ["--text_column", "id"],
     r"`--text_column`: column 'id' of the train split holds int values"),
    ("unknown-group", "train", lambda t, o, d: ["--groups", "a", "c"], r"Group\(s\) \['c'\] have no rows"),
    ("groups-leave-out", "train", lambda t, o, d: ["--groups", "a", "b", "--dataset", _jsonl(t / "d.jsonl", _rows(
     [{"text": f"third group row {i}", "gender": "c", "id": 200 + i} for i in range(6)]))],
     r"`--groups` \['a', 'b'\] leaves out group\(s\) \['c'\] of column 'gender': 6 row\(s\) of the train split "
     r"\(rows \[36, 37, 38, 39, 40, 41\]\); list every group in `--groups` .*--skip_unusable_groups"),
    ("empty-data-file", "train", lambda t, o, d: ["--dataset", (t / "e.jsonl").write_text("\n") and t / "e.jsonl"],
     r"`--dataset`: '.*e\.jsonl' is empty"),
    ("header-only-csv", "train", lambda t, o, d: ["--dataset", (t / "h.csv").write_text("text,gender\n") and
     t / "h.csv"], r"`--dataset`: cannot read '.*h\.csv' as csv \(no rows, or malformed\)"),
    ("none-label", "train", lambda t, o, d: ["--dataset", _jsonl(t / "d.jsonl", _rows([{"text": "x y", "gender": None,
     "id": 7}]))], r"1 row\(s\) of the train split have no group label .*rows \[36\].*--skip_unusable_groups"),
    ("empty-text", "train", lambda t, o, d: ["--dataset", _jsonl(t / "d.jsonl", _rows([{"text": " ", "gender": "a",
     "id": 7}]))], r"empty text \(column 'text'\): rows \[36\]"),
    ("one-row-group", "train", lambda t, o, d: ["--dataset", _jsonl(t / "d.jsonl", _rows([{"text": "lonely row",
     "gender": "c", "id": 7}]))], r"group\(s\) \['c'\] .* have a single row, which cannot be split"),
    ("group-only-in-eval", "train", lambda t, o, d: ["--dataset", _split_folder(t)],
     r"group\(s\) \['c'\] .* have rows only in the eval split 'test'"),
    ("group-without-eval", "train", lambda t, o, d: ["--dataset", _split_folder_without_b(t)],
     r"group\(s\) \['b'\] .* have no row in the eval split, so they cannot be evaluated"),
    # evaluate
    ("evaluate-too-few", "evaluate", lambda t, o, d: ["--max_eval_per_group", "3"],
     r"group\(s\) \['a', 'b'\] have \[3, 2\] eval row\(s\) .* 'quantized_js' estimator needs at least 20"),
    ("evaluate-knn-k", "evaluate", lambda t, o, d: ["--divergence", "kl", "--max_prompts_per_group", "5"],
     r"'kl' estimator needs at least 6 .*--feature_model none"),
    ("evaluate-max-per-group", "evaluate", lambda t, o, d: ["--max_eval_per_group", "0"],
     r"`--max_eval_per_group` must be >= 1"),
    ("evaluate-dashed-spelling", "evaluate", lambda t, o, d: ["--max-eval-per-group", "0"],
     r"`--max_eval_per_group` must be >= 1"),
    ("evaluate-groups-leave-out", "evaluate", lambda t, o, d: ["--groups", "a"],
     r"`--groups` \['a'\] leaves out group\(s\) \['b'\] of column 'gender': 12 row\(s\) of the train split"),
    ("evaluate-split-json", "evaluate", lambda t, o, d: ["--adapter", (o / "adapter_config.json").write_text("{}")
     and (o / "split.json").write_text("{oops") and o], r"`--adapter`: the split record .*split\.json is not valid"),
    ("evaluate-output-dir", "evaluate", lambda t, o, d: [(o / "report.json").write_text("{}") and "--seed", "1"],
     r"`--output_dir`: .* already holds a report \(report\.json\); pass `--overwrite_output_dir`"),
    ("evaluate-nothing-left", "evaluate", lambda t, o, d: ["--max_eval_per_group", "3", "--skip_unusable_groups"],
     r"No group is left to evaluate: group\(s\) \['a', 'b'\]"),
    ("evaluate-adapter-missing", "evaluate", lambda t, o, d: ["--adapter", t / "no" / "adapter"],
     r"`--adapter`: no such folder"),
    ("evaluate-adapter-not-peft", "evaluate", lambda t, o, d: ["--adapter", o], r"`--adapter`: .* no adapter_config"),
    ("evaluate-split-changed", "evaluate", lambda t, o, d: ["--adapter", _adapter_with_foreign_split(t, d)],
     r"`--dataset`: the held-out rows of .* do not match those recorded in .*split\.json"),
    ("evaluate-feature-model", "evaluate", lambda t, o, d: ["--feature_model", t / "no-encoder"],
     r"`--feature_model`: no such folder"),
    ("evaluate-feature-model-hub-id", "evaluate", lambda t, o, d: ["--feature_model", "no-such-user/no-encoder"],
     r"`--feature_model` 'no-such-user/no-encoder' could not be loaded as a text encoder"),
    ("evaluate-feature-model-empty-folder", "evaluate", lambda t, o, d: ["--feature_model", _empty_folder(t)],
     r"`--feature_model` '.*empty' could not be loaded as a text encoder"),
    # diffusion
    ("diffusion-resume-missing", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint", o / "checkpoint-9"],
     r"`--resume_from_checkpoint`: no such checkpoint folder .*checkpoint-9"),
    # one resume rule for both commands: `latest` without a checkpoint is an error, as it is for `train`
    ("diffusion-resume-latest-none", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint", "latest"],
     r"`--resume_from_checkpoint` 'latest': no `checkpoint-<step>` folder in the output directory"),
    ("diffusion-resume-no-objective", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint",
     (o / "checkpoint-9").mkdir() or o / "checkpoint-9"],
     r"`--resume_from_checkpoint`: .*checkpoint-9/group_objective\.safetensors does not exist"),
    ("diffusion-resume-truncated", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint",
     _diffusion_checkpoint(o / "checkpoint-2")],
     r"`--resume_from_checkpoint`: .*checkpoint-2/model\.safetensors is unreadable or truncated"),
    ("diffusion-resume-groups", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint",
     _diffusion_checkpoint(o / "checkpoint-2", truncated=False)],
     r"`--resume_from_checkpoint`: .*checkpoint-2/group_objective\.safetensors: .*groups"),
    ("diffusion-resume-lora-r", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint",
     _diffusion_checkpoint(o / "checkpoint-2", truncated=False, groups=DIGITS, record={"lora_r": 4})],
     r"`--lora_r`: .*checkpoint-2 was saved with 4, this run has 8; resume with the saved value"),
    ("diffusion-resume-dataset", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint",
     _diffusion_checkpoint(o / "checkpoint-2", truncated=False, groups=DIGITS,
     record={"dataset": {"name": "my-images", "sha256": "f" * 64}})],
     r"`--dataset`: .* saved with 'my-images' \(training rows sha256 ffffffffffff\), this run has "
     r"'digits-imbalanced' .*--resume_allow_changes dataset"),
    ("diffusion-resume-optimizer", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint",
     _diffusion_checkpoint(o / "checkpoint-2", truncated=False, groups=DIGITS, truncated_state="optimizer.bin")],
     r"`--resume_from_checkpoint`: .*checkpoint-2/optimizer\.bin is unreadable or truncated"),
    ("diffusion-resume-latest-rng", "train-diffusion", lambda t, o, d: ["--resume_from_checkpoint", "latest",
     _diffusion_checkpoint(o / "checkpoint-2", truncated=False, groups=DIGITS,
     truncated_state="random_states_0.pkl") and "--seed", "1"],
     r"`--resume_from_checkpoint`: .*checkpoint-2/random_states_0\.pkl is unreadable or truncated"),
    ("diffusion-learning-rate", "train-diffusion", lambda t, o, d: [_checkpoint(o / "checkpoint-4") and
     "--overwrite_output_dir", "--learning_rate", "-0.1"], r"`--learning_rate` must be >= 0, got -0\.1"),
    ("diffusion-report-to", "train-diffusion", lambda t, o, d: ["--report_to", "tensorboard"],
     r"`--report_to`: 'tensorboard' is not installed .*`--report_to none`"),
    ("diffusion-push-without-token", "train-diffusion", lambda t, o, d: ["--push_to_hub", "--hub_model_id", "me/x"],
     r"Pushing to the Hub needs a token"),
    ("diffusion-output-dir", "train-diffusion", lambda t, o, d: [_checkpoint(o / "checkpoint-4") and "--seed", "1"],
     r"`--output_dir`: .* already holds the outputs of a run \(checkpoint-4\); pass `--resume_from_checkpoint true`"),
    # one output-folder rule for both commands: a finished run's outputs (no checkpoint left) are refused too
    ("diffusion-output-dir-outputs", "train-diffusion", lambda t, o, d: [
     (o / "group_objective.safetensors").touch() or "--seed", "1"],
     r"`--output_dir`: .* already holds the outputs of a run \(group_objective\.safetensors\)"),
]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _run_console(argv) -> int:
    from hf_egt.apps.cli import console_main

    with pytest.raises(SystemExit) as exit_info:
        console_main([str(arg) for arg in argv])
    return exit_info.value.code


@pytest.mark.parametrize(("command", "extra", "message"), [row[1:] for row in MATRIX], ids=[row[0] for row in MATRIX])
def test_bad_input_is_one_error_line_before_any_work(
    monkeypatch, capsys, tmp_path, tiny_lm, tiny_json, command, extra, message
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the input is validated")

    import huggingface_hub

    monkeypatch.setattr("hf_egt.apps.checks.load_checked_causal_lm", no_model)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr("hf_egt.integrations.diffusion.train.load_components", no_model)
    # as where tensorboard is not installed, whatever this environment has
    monkeypatch.setattr("transformers.integrations.integration_utils.get_available_reporting_integrations", lambda: [])
    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run's notes")
    extra = [str(arg) for arg in extra(tmp_path, out, tiny_json)]
    before = _snapshot(tmp_path)
    if command == "train":
        argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--output_dir", out, *BASE_TRAIN]
    elif command == "evaluate":
        argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--group_column", "gender"]
        argv += ["--output_dir", out]
    else:
        argv = ["train-diffusion", "--model_name_or_path", tmp_path, "--dataset", "digits-imbalanced"]
        argv += ["--output_dir", out]
    argv += extra  # later options win
    capsys.readouterr()
    code = _run_console(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("hf-egt: error:")]
    assert len(lines) == 1, err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert "Traceback" not in err and "hf_abbrev_secret" not in err
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def test_debug_shows_the_traceback(monkeypatch, tiny_lm, tiny_json, tmp_path):
    from hf_egt.apps.cli import console_main

    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--output_dir", tmp_path, *BASE_TRAIN]
    argv = [str(arg) for arg in [*argv, "--max_steps", "0"]]
    with pytest.raises(ValueError, match="`--max_steps` 0"):
        console_main(["--debug", *argv])
    monkeypatch.setenv("HF_EGT_DEBUG", "1")
    with pytest.raises(ValueError, match="`--max_steps` 0"):
        console_main(argv)


def test_version_and_python_dash_m():
    from hf_egt import __version__

    result = subprocess.run([sys.executable, "-m", "hf_egt", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"hf-egt {__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "hf_egt", "evaluate", "--model_name_or_path", "x", "--dataset", "bold-race"]
        + ["--divergence", "kld"],
        capture_output=True,
        text=True,
    )
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "argument --divergence: invalid choice: 'kld'" in last_line, last_line


def test_redaction_covers_every_spelling():
    from hf_egt.apps.arguments import redacted_command

    argv = ["--hub_token", "s1", "--hub-token=s2", "--hub_token=s3", "--hub-token", "s4", "--token", "s5", "--x", "1"]
    command = redacted_command("hf-egt train", argv)
    assert not any(f"s{i}" in command for i in range(1, 6)) and "--x 1" in command


def test_evaluate_load_rejects_an_unknown_divergence_config():
    import evaluate

    with pytest.raises(ValueError, match=r"Unknown EGT configuration 'kld'.*'kl'.*'quantized_js'"):
        evaluate.load(str(REPO_ROOT / "metrics" / "egt"), "kld")
    assert evaluate.load(str(REPO_ROOT / "metrics" / "egt"), "hellinger").config_name == "hellinger"


def test_skip_unusable_groups_warns_and_reports_what_was_left_out(tmp_path):
    from hf_egt.apps.data import load_grouped_splits

    data = _jsonl(tmp_path / "d.jsonl", _rows([{"text": "lonely row", "gender": "c", "id": 7}, {"text": "", "gender":
                  "a", "id": 8}, {"text": "no label", "gender": None, "id": 9}]))  # fmt: skip
    splits = load_grouped_splits(str(data), group_column="gender", skip_unusable_groups=True)
    assert splits.groups == ["a", "b"] and set(splits.evaluation["gender"]) == {"a", "b"}
    assert len(splits.dropped) == 2 and "rows [37, 38]" in splits.dropped[0] and "['c']" in splits.dropped[1]
    assert splits.split["dropped"] == splits.dropped
    # the same data through the API without the option: the error the CLI prints
    with pytest.raises(ValueError, match=r"rows \[37, 38\]"):
        load_grouped_splits(str(data), group_column="gender")


def test_groups_leaving_out_a_group_is_refused_or_recorded_the_same_in_the_api(tmp_path, caplog):
    """`groups` listing fewer groups than the data has: an error naming the group and its rows, or, with
    `skip_unusable_groups`, the listed groups only, with a warning and the rest in `dropped` and the split record."""
    from hf_egt.apps.data import load_grouped_splits

    third = [{"text": f"third group row {i}", "gender": "c", "id": 200 + i} for i in range(6)]
    data = _jsonl(tmp_path / "d.jsonl", _rows(third))
    with pytest.raises(ValueError, match=r"leaves out group\(s\) \['c'\] .*6 row\(s\) of the train split"):
        load_grouped_splits(str(data), group_column="gender", groups=["a", "b"])
    with caplog.at_level("WARNING", logger="hf_egt.apps.data"):
        splits = load_grouped_splits(str(data), group_column="gender", groups=["a", "b"], skip_unusable_groups=True)
    assert set(splits.train["gender"]) == set(splits.evaluation["gender"]) == {"a", "b"}
    assert len(splits.dropped) == 1 and "['c']" in splits.dropped[0] and "not in `--groups`" in splits.dropped[0]
    assert splits.split["dropped"] == splits.dropped and splits.split["groups"] == ["a", "b"]
    assert any("['c']" in record.getMessage() for record in caplog.records)
    # every group listed: nothing left out, nothing recorded
    assert load_grouped_splits(str(data), group_column="gender", groups=["a", "b", "c"]).dropped == []


def test_push_to_an_unreachable_hub_fails_before_any_work(monkeypatch, capsys, tmp_path, tiny_lm, tiny_json):
    from huggingface_hub import constants

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the Hub is checked")

    monkeypatch.setattr("hf_egt.apps.checks.load_checked_causal_lm", no_model)
    monkeypatch.setattr("hf_egt.apps.data.load_grouped_splits", no_model)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--output_dir", out, *BASE_TRAIN]
    code = _run_console([*argv, "--push_to_hub", "--hub_model_id", "me/x", "--hub_token", "hf_unreachable"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-egt: error:")]
    assert code == 2 and len(lines) == 1
    assert "`--push_to_hub`: the Hub at http://127.0.0.1:9 cannot be reached" in lines[0]
    assert "hf_unreachable" not in lines[0] and not out.exists()


def test_trainer_api_names_rows_without_group():
    from hf_egt.integrations.trainer import resolve_groups

    with pytest.raises(ValueError, match=r"train dataset has 1 row\(s\) without a group label .*rows \[1\]"):
        resolve_groups(None, ["a", None, "b"], {})


# ------------------------------------------------------------------------------------------------ train for real
def _train(argv) -> dict:
    from hf_egt.apps.cli import main

    return main([str(arg) for arg in ["train", *argv]])


def _adapter_and_weights(folder: Path) -> tuple[dict, torch.Tensor]:
    from safetensors.torch import load_file

    from hf_egt.core.objective import GroupObjective

    objective = GroupObjective.from_file(str(folder / "group_objective.safetensors"))
    return load_file(folder / "adapter_model.safetensors"), objective.weights


def test_resume_two_plus_two_steps_equals_four(tmp_path, tiny_lm, tiny_json):
    """4 steps straight == the same run resumed from its step-2 checkpoint: LoRA weights, group weights, step."""
    import shutil

    common = ["--model_name_or_path", tiny_lm, "--dataset", tiny_json, *BASE_TRAIN, "--max_steps", "4"]
    common += ["--objective", "minmax", "--group_step_size", "1.0", "--learning_rate", "0.05", "--eval_base", "false"]
    common += ["--save_steps", "2", "--lr_scheduler_type", "linear", "--warmup_steps", "1", "--seed", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train([*common, "--output_dir", straight])
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    # the fresh-run check refuses the folder; `true` picks its last checkpoint
    with pytest.raises(ValueError, match="already holds the outputs of a run"):
        _train([*common, "--output_dir", resumed])
    result = _train([*common, "--output_dir", resumed, "--resume_from_checkpoint", "true"])
    assert result["split"]["eval_sha256"] == json.loads((straight / "split.json").read_text())["eval_sha256"]
    weights_straight, groups_straight = _adapter_and_weights(straight)
    weights_resumed, groups_resumed = _adapter_and_weights(resumed)
    assert weights_straight.keys() == weights_resumed.keys()
    for name in weights_straight:
        torch.testing.assert_close(weights_resumed[name], weights_straight[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(groups_resumed, groups_straight, rtol=0, atol=1e-12)
    assert not torch.allclose(groups_straight, torch.full_like(groups_straight, 0.5))  # the weights did move
    state = json.loads((resumed / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert json.loads((resumed / "report.json").read_text())["config"]["resumed_from"].endswith("checkpoint-2")


def test_resume_checks_the_run_record_of_a_real_checkpoint(tmp_path, tiny_lm, tiny_json, monkeypatch):
    """Every checkpoint holds the run's record; a resume on other data or another LoRA rank is refused before the
    model loads (nothing in the folder changes), and other data is accepted with `--resume_allow_changes dataset`,
    which the report and the card then say."""
    from hf_egt.core.resume import RUN_RECORD_NAME

    out = tmp_path / "out"
    common = ["--model_name_or_path", tiny_lm, *BASE_TRAIN, "--eval_base", "false", "--output_dir", out]
    _train([*common, "--dataset", tiny_json, "--save_steps", "1"])
    record = json.loads((out / "checkpoint-2" / RUN_RECORD_NAME).read_text())
    assert record["dataset"]["sha256"] == json.loads((out / "split.json").read_text())["train_sha256"]
    assert record["lora_r"] == 2 and record["groups"] == ["a", "b"] and record["objective"] == "minmax"
    assert Path(record["model_name_or_path"]).is_absolute()
    other = _jsonl(tmp_path / "other.jsonl", _rows([{"text": "one more row of group a", "gender": "a", "id": -1}]))
    before = _snapshot(out)
    resume = ["--resume_from_checkpoint", "true", "--max_steps", "3"]
    with monkeypatch.context() as patch:
        patch.setattr("hf_egt.apps.checks.load_checked_causal_lm", lambda *a: pytest.fail("the model was loaded"))
        with pytest.raises(ValueError, match=r"`--dataset`: .*checkpoint-2 was saved with '.*bios\.jsonl' .*other"):
            _train([*common, "--dataset", other, *resume])
        with pytest.raises(ValueError, match=r"`--lora_r`: .*checkpoint-2 was saved with 2, this run has 4"):
            _train([*common, "--dataset", tiny_json, *resume, "--lora_r", "4"])
    assert _snapshot(out) == before
    _train([*common, "--dataset", other, *resume, "--resume_allow_changes", "dataset"])
    changes = json.loads((out / "report.json").read_text())["config"]["resume_changes"]
    assert len(changes) == 1 and changes[0].startswith("`--dataset` changed on resume")
    assert "changed on resume" in (out / "README.md").read_text()
    assert json.loads((out / "checkpoint-3" / RUN_RECORD_NAME).read_text())["dataset"]["name"] == str(other)


def test_overwrite_output_dir_replaces_an_earlier_run(tmp_path, tiny_lm, tiny_json):
    out = tmp_path / "out"
    common = ["--model_name_or_path", tiny_lm, "--dataset", tiny_json, *BASE_TRAIN, "--eval_base", "false"]
    _train([*common, "--output_dir", out, "--save_steps", "1"])
    assert (out / "checkpoint-2").is_dir()
    report = (out / "report.json").read_bytes()
    with pytest.raises(ValueError, match=r"already holds the outputs of a run \(checkpoint-1, checkpoint-2"):
        _train([*common, "--output_dir", out, "--seed", "7"])
    assert (out / "report.json").read_bytes() == report
    _train([*common, "--output_dir", out, "--seed", "7", "--overwrite_output_dir", "--save_strategy", "no"])
    assert not list(out.glob("checkpoint-*"))  # the earlier run's checkpoints cannot be resumed by mistake
    assert json.loads((out / "split.json").read_text())["seed"] == 7


def test_adapter_of_a_relative_model_path_loads_from_another_folder(tmp_path, tiny_lm, tiny_json, monkeypatch):
    """`--model_name_or_path models/tiny` (relative): the adapter records the folder as an absolute path, so the
    card's snippet loads it from any working directory."""
    import shutil

    from peft import AutoPeftModelForCausalLM

    shutil.copytree(tiny_lm, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    _train(["--model_name_or_path", "models/tiny", "--dataset", tiny_json, *BASE_TRAIN, "--output_dir", "out",
            "--eval_base", "false"])  # fmt: skip
    recorded = json.loads((tmp_path / "out" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((tmp_path / "models" / "tiny").resolve())
    assert 'from_pretrained("out")' in (tmp_path / "out" / "README.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.peft_config["default"].base_model_name_or_path == recorded


def test_token_is_in_no_output_file_and_no_upload(tmp_path, tiny_lm, tiny_json, monkeypatch):
    """Train (with checkpoints) + push: the token string is absent from every file written and every file
    uploaded; only the allow-listed files are uploaded."""
    from huggingface_hub import constants

    token = "hf_SECRETtoken1234567890"
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_lm, "--dataset", tiny_json, *BASE_TRAIN, "--save_steps", "1"]
    argv += ["--output_dir", out, "--push_to_hub", "--hub_model_id", "me/tiny", f"--hub_token={token}"]
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        _train(argv)
    written = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert out / "training_args.bin" in written and out / "checkpoint-1" / "training_args.bin" in written
    assert [path for path, content in written.items() if token.encode() in content] == []
    assert [name for name, content in hub.files.items() if token.encode() in content] == []
    assert all(auth == f"Bearer {token}" for auth in hub.authorizations)
    assert set(hub.files) >= {"README.md", "adapter_model.safetensors", "adapter_config.json", "split.json"}
    assert not any(name.startswith(("checkpoint-", "runs/")) or name.endswith(".bin") for name in hub.files)
    card = hub.files["README.md"].decode()
    assert "learning rate: `5e-05`" in card and "| a | 5 |" in card and "same quality" not in card


def test_evaluate_reuses_the_held_out_rows_of_training(tmp_path, tiny_lm, tiny_json, monkeypatch):
    """`train` splits with seed 42, `evaluate --adapter` (default seed 0) evaluates exactly the recorded held-out
    rows: no overlap with the training rows (a fresh split with seed 0 would overlap)."""
    import hf_egt.apps.data
    import hf_egt.integrations.evaluation
    from hf_egt.apps.cli import main

    captured = {}
    real_splits, real_evaluate = hf_egt.apps.data.load_grouped_splits, hf_egt.integrations.evaluation.evaluate_causal_lm

    def capture_splits(*args, **kwargs):
        splits = real_splits(*args, **kwargs)
        captured.setdefault("train", list(splits.train["text"]))
        return splits

    def capture_evaluate(model, tokenizer, texts, groups, **kwargs):
        captured.setdefault("evaluated", list(texts))
        return real_evaluate(model, tokenizer, texts, groups, **kwargs)

    monkeypatch.setattr(hf_egt.apps.data, "load_grouped_splits", capture_splits)
    monkeypatch.setattr(hf_egt.integrations.evaluation, "evaluate_causal_lm", capture_evaluate)
    out = tmp_path / "adapter"
    _train(["--model_name_or_path", tiny_lm, "--dataset", tiny_json, *BASE_TRAIN, "--output_dir", out, "--seed", "42"])
    argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", tiny_json, "--adapter", out]
    result = main([str(a) for a in [*argv, "--feature_model", "none", "--output_dir", tmp_path / "eval"]])
    assert set(captured["evaluated"]).isdisjoint(captured["train"])
    assert len(captured["evaluated"]) == sum(json.loads((out / "split.json").read_text())["eval_counts"].values())
    assert result["held_out"].startswith(f"reused from {out / 'split.json'}")
    assert "reused from" in (tmp_path / "eval" / "report.md").read_text()
    fresh = real_splits(str(tiny_json), group_column="gender", seed=0)
    assert not set(fresh.evaluation["text"]).isdisjoint(captured["train"])  # what the old default did


def test_hyper_artifacts_load_with_the_card_snippets(tmp_path, tiny_lm, tiny_json):
    """`--hyper`: the exported plain-peft adapter and the hypernetwork load with the card's snippets, give the same
    logits, and are what the report's last column measured."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from hf_egt.integrations.hyper import HyperLoRAModel

    out = tmp_path / "hyper"
    argv = ["--model_name_or_path", tiny_lm, "--dataset", tiny_json, *BASE_TRAIN, "--output_dir", out, "--hyper"]
    _train([*argv, "--eval_base", "false", "--hyper_context_size", "8"])
    card = (out / "README.md").read_text()
    assert "AutoPeftModelForCausalLM.from_pretrained" in card and 'subfolder="hypernetwork")' in card
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert json.loads((out / "hypernetwork" / "adapter_config.json").read_text())["peft_type"] == "HYPER_LORA"
    plain = AutoPeftModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    hyper_on_base = PeftModel.from_pretrained(base, str(out), subfolder="hypernetwork")  # the card's snippet
    hyper = AutoPeftModelForCausalLM.from_pretrained(out / "hypernetwork")
    assert isinstance(hyper.base_model, HyperLoRAModel) and isinstance(hyper_on_base.base_model, HyperLoRAModel)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():  # the saved context generates exactly the exported LoRA weights
        for model in (hyper.eval(), hyper_on_base.eval()):
            torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    from transformers import AutoTokenizer

    from hf_egt.apps.data import load_grouped_splits
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    evaluation = load_grouped_splits(str(tiny_json), group_column="gender", seed=42).evaluation
    measured = evaluate_causal_lm(
        plain, AutoTokenizer.from_pretrained(tiny_lm), evaluation["text"], evaluation["gender"]
    )
    reported = json.loads((out / "report.json").read_text())["runs"]["minmax"]["per_group"]
    assert reported == pytest.approx(measured["per_group"], rel=1e-4)


def test_tensorboard_logs_of_an_evaluation_before_training_go_under_output_dir(tmp_path, monkeypatch):
    """`evaluate()` before `train()` logs first: TensorBoardCallback would open its writer in ./runs."""
    from transformers.integrations import TensorBoardCallback

    from hf_egt.integrations.trainer import EGTConfig, EGTTrainer
    from tests.trainer_utils import group_dataset, tiny_llama

    opened = []

    class RecordingWriter:
        def __init__(self, log_dir=None):
            opened.append(log_dir)

        def add_scalar(self, *args, **kwargs):
            pass

        add_text = add_scalar
        flush = close = add_scalar

    class TensorBoardWithoutTensorBoard(TensorBoardCallback):  # tensorboard is not installed here
        def __init__(self):
            self._SummaryWriter, self.tb_writer, self.logging_dir = RecordingWriter, None, None

    monkeypatch.chdir(tmp_path)
    args = EGTConfig(str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_eval_batch_size=4)
    trainer = EGTTrainer(
        model=tiny_llama(),
        args=args,
        eval_dataset=group_dataset({"a": 4, "b": 4}),
        train_dataset=group_dataset({"a": 4, "b": 4}, seed=1),
        callbacks=[TensorBoardWithoutTensorBoard()],
    )
    trainer.evaluate()
    assert len(opened) == 1 and Path(opened[0]).parent == tmp_path / "out" / "runs"
    assert not (tmp_path / "runs").exists()


def test_config_pickles_drop_the_token_and_copies_keep_it():
    import copy
    import pickle

    from hf_egt.integrations.trainer import EGTConfig

    args = EGTConfig("out", hub_token="hf_pickled_secret", report_to="none")
    assert b"hf_pickled_secret" not in pickle.dumps(args)
    assert pickle.loads(pickle.dumps(args)).hub_token is None and pickle.loads(pickle.dumps(args)).output_dir == "out"
    assert copy.deepcopy(args).hub_token == copy.copy(args).hub_token == "hf_pickled_secret"


def test_library_evaluation_checks_sample_sizes_before_any_work():
    """`evaluate_causal_lm` (the API under `hf-egt evaluate`) rejects too-small groups before running the model."""
    from hf_egt.integrations.evaluation import evaluate_causal_lm

    class NoModel:
        def parameters(self):
            raise AssertionError("the model must not run before the sample sizes are checked")

    texts, groups = ["some text here"] * 9, ["a"] * 6 + ["b"] * 3
    with pytest.raises(ValueError, match=r"\{'b': 3\} have fewer prompts than the 'kl' estimator needs \(6"):
        evaluate_causal_lm(NoModel(), None, texts, groups, feature_model="unused", divergence="kl")
    with pytest.raises(ValueError, match=r"have fewer prompts than the 'quantized_js' estimator needs \(20"):
        evaluate_causal_lm(NoModel(), None, texts, groups, feature_model="unused")
    with pytest.raises(ValueError, match=r"Unknown `divergence` 'kld'"):
        evaluate_causal_lm(NoModel(), None, texts, groups, feature_model="unused", divergence="kld")


def test_what_training_left_out_is_repeated_in_report_card_and_evaluate(tmp_path, tiny_lm):
    from hf_egt.apps.cli import main

    rows = [{"text": "lonely row", "gender": "c", "id": 7}]
    rows += [{"text": f"a row of group d number {i}", "gender": "d", "id": 300 + i} for i in range(6)]
    data = _jsonl(tmp_path / "d.jsonl", _rows(rows))
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        tiny_lm,
        "--dataset",
        data,
        *BASE_TRAIN,
        "--output_dir",
        out,
        "--eval_base",
        "false",
    ]
    result = _train([*argv, "--skip_unusable_groups", "--groups", "a", "b"])  # c: one row; d: not in --groups
    assert len(result["dropped"]) == 2 and "['c']" in result["dropped"][0] and "['d']" in result["dropped"][1]
    assert "`--groups` ['a', 'b'] leaves out group(s) ['d']" in result["dropped"][1]
    for name in ("README.md", "report.md"):
        for item in result["dropped"]:
            assert item in (out / name).read_text(), name
    assert json.loads((out / "report.json").read_text())["config"]["dropped"] == result["dropped"]
    assert json.loads((out / "split.json").read_text())["dropped"] == result["dropped"]
    assert set(json.loads((out / "report.json").read_text())["runs"]["minmax"]["per_group"]) == {"a", "b"}
    argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset", data, "--adapter", out, "--feature_model", "none"]
    evaluated = main([str(arg) for arg in [*argv, "--output_dir", tmp_path / "eval"]])
    assert (
        evaluated["dropped"] == result["dropped"]
        and result["dropped"][0] in (tmp_path / "eval" / "report.md").read_text()
    )


def test_trainer_api_checks_the_checkpoint_before_resuming(tmp_path):
    from hf_egt.integrations.trainer import EGTConfig, EGTTrainer
    from tests.trainer_utils import group_dataset, tiny_llama

    args = EGTConfig(str(tmp_path / "out"), report_to="none", use_cpu=True, max_steps=1)
    trainer = EGTTrainer(model=tiny_llama(), args=args, train_dataset=group_dataset({"a": 4, "b": 4}))
    foreign = _checkpoint(tmp_path / "out" / "checkpoint-2", groups=("a", "c"))
    with pytest.raises(
        ValueError, match=r"checkpoint-2/group_objective\.safetensors was saved for groups \['a', 'c'\]"
    ):
        trainer.train(resume_from_checkpoint=str(foreign))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is unreadable or truncated"):
        trainer.train(resume_from_checkpoint=str(_checkpoint(tmp_path / "truncated", truncate=True)))
    assert trainer.state.global_step == 0
